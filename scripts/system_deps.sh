#!/usr/bin/env bash
# System libraries that pip cannot install but the project's wheels load at run time:
#   libusb-1.0-0                                      pyrealsense2 (RealSense recording, its tests)
#   libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0   MuJoCo's headless (EGL) rendering of the twin
# Installs the missing ones with apt-get when run as root; otherwise (not root, no apt-get, or
# NO_APT=1) prints one line naming them. Always exits 0: everything else works without them, and
# the tests that need them skip saying why. A machine that has them all does no apt work.
set -uo pipefail

[ "$(uname -s)" = Linux ] || exit 0     # macOS/Windows wheels bundle what they need

# Debian/Ubuntu package -> a file of it the dynamic loader (or Mesa's loader) looks for.
packages=(libusb-1.0-0 libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0)
declare -A provides=(
  [libusb-1.0-0]=libusb-1.0.so.0
  [libegl1]=libEGL.so.1
  [libegl-mesa0]=libEGL_mesa.so.0
  [libgl1-mesa-dri]=dri/swrast_dri.so   # Mesa's software rasteriser: EGL without a GPU
  [libopengl0]=libOpenGL.so.0
)
declare -A needed_by=(
  [libusb-1.0-0]="RealSense cameras"
  [libegl1]="headless sim rendering"
  [libegl-mesa0]="headless sim rendering"
  [libgl1-mesa-dri]="headless sim rendering"
  [libopengl0]="headless sim rendering"
)

ldconfig_cache=$( (command -v ldconfig >/dev/null && ldconfig -p || /sbin/ldconfig -p) 2>/dev/null)

present() {   # present FILE: is a shared library (or Mesa driver) of that name installed?
  case "$1" in
    dri/*) compgen -G "/usr/lib/*/$1" >/dev/null || compgen -G "/usr/lib*/$1" >/dev/null ;;
    *) grep -qE "^[[:space:]]*${1//./\\.} " <<<"$ldconfig_cache" ;;
  esac
}

missing=()
unavailable=""
for package in "${packages[@]}"; do
  present "${provides[$package]}" && continue
  missing+=("$package")
  [[ "$unavailable" == *"${needed_by[$package]}"* ]] || unavailable+="${unavailable:+ and }${needed_by[$package]}"
done
[ ${#missing[@]} -eq 0 ] && exit 0
unavailable="$unavailable will not work until then"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${NO_APT:-0}" != 1 ]; then
  echo "system libraries: apt-get install ${missing[*]}"
  if DEBIAN_FRONTEND=noninteractive apt-get update -qq \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    exit 0
  fi
  echo "system libraries: apt-get install ${missing[*]} failed (see above); $unavailable"
else
  echo "system libraries missing: run \`sudo apt-get install ${missing[*]}\` (or your system's equivalent); $unavailable"
fi
exit 0
