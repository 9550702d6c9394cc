#!/bin/sh
# A Blender that answers --version and reads scenes at submit, but fails every render session, as a broken
# install or a machine out of memory does. Tests copy it into a temporary folder; a "fixed" file there makes it
# real Blender again (the cause is fixed). REAL_BLENDER names the Blender it stands for.
dir="$(dirname "$0")"
for arg in "$@"; do
    case "$arg" in
    *rex_driver.py)
        if [ ! -e "$dir/fixed" ]; then
            echo "Blender 3.4.1"
            echo "Error: Not enough memory to load the scene (simulated broken machine)" >&2
            exit 1
        fi
        ;;
    esac
done
exec "${REAL_BLENDER:-/usr/bin/blender}" "$@"
