#!/usr/bin/env bash
# cibuildwheel before-all, inside the manylinux_2_34 (AlmaLinux 9) image: OpenSSL 3 headers
# always; intel-ipsec-mb from EPEL when the image can have it (the wheel is then built with
# the multi-buffer backend; otherwise it is OpenSSL-only, and `ipsp info` says so).
set -euxo pipefail
dnf install -y openssl-devel pkgconf-pkg-config
if dnf install -y epel-release && dnf install -y intel-ipsec-mb-devel; then
    echo "building with intel-ipsec-mb"
else
    echo "intel-ipsec-mb not available in this image: OpenSSL-only wheel"
fi
