"""Child process for the crash-safety test: appends deterministic episodes until it is killed.

Prints ``saved <episode>`` after each save_episode returns, so the parent knows which episodes
must survive. Reopens (and recovers) the dataset when it already exists.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dataset_factory as f  # noqa: E402
from rlbench_sms.data.writer import DatasetWriter  # noqa: E402

root = Path(sys.argv[1])
if (root / "meta/info.json").is_file():
    writer, report = DatasetWriter.open(root)
    print(f"recovered {report.summary()}", flush=True)
else:
    writer = DatasetWriter.create(root, f.FPS, f.features(), robot_type="so100_follower")
e = writer.num_episodes
print("ready", flush=True)
while True:
    for i in range(f.episode_length(e)):
        writer.add_frame(f.frame(e, i), f.task(e))
        time.sleep(0.002)
    writer.save_episode()
    print(f"saved {e}", flush=True)
    e += 1
