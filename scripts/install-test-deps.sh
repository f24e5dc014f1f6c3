#!/usr/bin/env bash
# What `make test` needs beyond Python packages, on Debian or Arch:
# the real pacman/makepkg/repo-add/gpg the tests drive, nginx for the benchmark, and gcc + GMP
# because py-libp2p's fastecdsa dependency builds from source. The packaging tests
# (tests/pkgbuild) also need the system python's venv module (the PKGBUILD's build tools go in
# a venv of /usr/bin/python3, the interpreter the package runs) and systemd-analyze; chromium
# renders the gateway's directory listings (and later the status page) in a real browser.
set -euo pipefail

debian_packages=(pacman-package-manager makepkg archlinux-keyring gnupg zstd libarchive-tools
  fakeroot nginx gcc libgmp-dev python3-venv python3-dev systemd chromium)
arch_packages=(python gnupg zstd libarchive fakeroot binutils nginx gcc gmp nodejs npm chromium)

if command -v apt-get >/dev/null 2>&1; then
  need=()
  for p in "${debian_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  command -v node >/dev/null 2>&1 || need+=(nodejs npm)
  if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
elif command -v pacman >/dev/null 2>&1 && [ -f /etc/arch-release ]; then
  pacman -S --needed --noconfirm "${arch_packages[@]}"
else
  echo "install-test-deps: need apt-get (Debian) or pacman (Arch); install pacman, makepkg," \
    "gnupg, zstd, nginx, gcc and GMP by hand" >&2
  exit 1
fi
