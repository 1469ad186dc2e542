"""Policy serving: a server that runs a policy for robots, and the torch-free client they use.

- :mod:`~rlbench_sms.serving.wire`: msgpack messages, numpy arrays as raw bytes; never pickle.
- :mod:`~rlbench_sms.serving.protocol`: the handshake, requests and replies.
- :mod:`~rlbench_sms.serving.server`: ``python -m rlbench_sms.serving.server policy_path=...``.
- :mod:`~rlbench_sms.serving.client`: :class:`RemotePolicy` (robot side: numpy, msgpack, websockets).

Nothing is imported here, so that ``import rlbench_sms.serving.client`` pulls in no server (and no torch).
"""
