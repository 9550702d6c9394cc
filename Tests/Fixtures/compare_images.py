# Compares two images, or two folders of images (files with the same name), with Blender's own image decoders:
#
#   blender -b --factory-startup --python Tests/Fixtures/compare_images.py -- A B [--tolerance 2]
#
# Pixels are compared channel by channel in 8-bit units (round(v * 255)); a file passes when both images have
# the same size and no channel differs by more than the tolerance. For folders, names present on one side only
# are failures. The last line printed is "@@CMP " followed by one JSON object:
#   {"ok", "compared", "files": [{"name", "max_diff", "pixels_over", "size_a", "size_b",
#    "magenta_fraction_a", "magenta_fraction_b"[, "error"]}], "only_in_a", "only_in_b"}
# magenta_fraction is the share of pixels within 0.05 of (1, 0, 1) per channel: what Cycles renders for a
# missing texture. Exit status 0 when ok, 1 otherwise. Folders are compared one level deep (sub-folders and
# dot-files are ignored). A movie file decodes as its first frame only.
# numpy is used when Blender's Python has it; Debian's Blender uses the system Python, which may not, so there
# is a pure-Python fallback (fine for small test renders).
import argparse
import array
import json
import os
import sys
import traceback

import bpy

try:
    import numpy
except ImportError:
    numpy = None

MAGENTA_TOLERANCE = 0.05


def parse_arguments():
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser(prog="compare_images.py")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--tolerance", type=int, default=2)
    return parser.parse_args(argv)


class Decoded:
    def __init__(self, path):
        image = bpy.data.images.load(os.path.abspath(path), check_existing=False)
        try:
            self.width, self.height = image.size[0], image.size[1]
            self.channels = image.channels
            count = self.width * self.height * self.channels
            if count == 0:
                raise RuntimeError("cannot decode %s as an image" % path)
            if numpy is not None:
                values = numpy.empty(count, dtype=numpy.float32)
                image.pixels.foreach_get(values)
            else:
                values = array.array("f", bytes(4 * count))
                image.pixels.foreach_get(values)
        finally:
            bpy.data.images.remove(image)
        self.values = values

    @property
    def size(self):
        return [self.width, self.height]

    def rgba(self):
        """Values as RGBA rows: grey is expanded to RGB and a missing alpha becomes 1."""
        c = self.channels
        if numpy is not None:
            pixels = self.values.reshape(-1, c)
            if c >= 4:
                return pixels[:, :4]
            if c == 3:
                rgb = pixels
            elif c == 2:
                return numpy.concatenate([numpy.repeat(pixels[:, :1], 3, axis=1), pixels[:, 1:2]], axis=1)
            else:
                rgb = numpy.repeat(pixels[:, :1], 3, axis=1)
            return numpy.concatenate([rgb, numpy.ones((rgb.shape[0], 1), dtype=numpy.float32)], axis=1)
        v = self.values
        rows = []
        for i in range(0, len(v), c):
            if c >= 4:
                rows.append((v[i], v[i + 1], v[i + 2], v[i + 3]))
            elif c == 3:
                rows.append((v[i], v[i + 1], v[i + 2], 1.0))
            elif c == 2:
                rows.append((v[i], v[i], v[i], v[i + 1]))
            else:
                rows.append((v[i], v[i], v[i], 1.0))
        return rows

    def magenta_fraction(self):
        pixels = self.rgba()
        total = self.width * self.height
        if numpy is not None:
            close = ((numpy.abs(pixels[:, 0] - 1.0) <= MAGENTA_TOLERANCE)
                     & (numpy.abs(pixels[:, 1]) <= MAGENTA_TOLERANCE)
                     & (numpy.abs(pixels[:, 2] - 1.0) <= MAGENTA_TOLERANCE))
            return float(numpy.count_nonzero(close)) / total
        close = sum(1 for r, g, b, _ in pixels
                    if abs(r - 1.0) <= MAGENTA_TOLERANCE and abs(g) <= MAGENTA_TOLERANCE
                    and abs(b - 1.0) <= MAGENTA_TOLERANCE)
        return float(close) / total


def difference(a, b, tolerance):
    """(max abs channel difference in 8-bit units, pixels with any channel over the tolerance)."""
    pa, pb = a.rgba(), b.rgba()
    if numpy is not None:
        diff = numpy.abs(numpy.round(pa * 255.0) - numpy.round(pb * 255.0))
        return int(diff.max()) if diff.size else 0, int(numpy.count_nonzero((diff > tolerance).any(axis=1)))
    max_diff = 0
    over = 0
    for ra, rb in zip(pa, pb):
        worst = max(abs(round(x * 255.0) - round(y * 255.0)) for x, y in zip(ra, rb))
        if worst > max_diff:
            max_diff = worst
        if worst > tolerance:
            over += 1
    return int(max_diff), over


def compare_files(name, path_a, path_b, tolerance):
    entry = {"name": name, "max_diff": None, "pixels_over": None, "size_a": None, "size_b": None,
             "magenta_fraction_a": None, "magenta_fraction_b": None}
    errors = []
    decoded = {}
    for side, path in (("a", path_a), ("b", path_b)):
        try:
            image = Decoded(path)
            decoded[side] = image
            entry["size_" + side] = image.size
            entry["magenta_fraction_" + side] = round(image.magenta_fraction(), 6)
        except Exception as error:  # unreadable or not an image
            errors.append("%s: %s" % (side, error))
    ok = False
    if len(decoded) == 2:
        if decoded["a"].size != decoded["b"].size:
            errors.append("sizes differ")
        else:
            entry["max_diff"], entry["pixels_over"] = difference(decoded["a"], decoded["b"], tolerance)
            ok = entry["max_diff"] <= tolerance
    if errors:
        entry["error"] = "; ".join(errors)
    return ok, entry


def list_files(folder):
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and os.path.isfile(os.path.join(folder, name)))


def main():
    args = parse_arguments()
    result = {"ok": False, "compared": 0, "files": [], "only_in_a": [], "only_in_b": []}
    a_is_dir, b_is_dir = os.path.isdir(args.a), os.path.isdir(args.b)
    if a_is_dir and b_is_dir:
        names_a, names_b = list_files(args.a), list_files(args.b)
        result["only_in_a"] = [n for n in names_a if n not in names_b]
        result["only_in_b"] = [n for n in names_b if n not in names_a]
        pairs = [(n, os.path.join(args.a, n), os.path.join(args.b, n)) for n in names_a if n in names_b]
        all_ok = not result["only_in_a"] and not result["only_in_b"]
    elif not a_is_dir and not b_is_dir and os.path.isfile(args.a) and os.path.isfile(args.b):
        pairs = [(os.path.basename(args.a), args.a, args.b)]
        all_ok = True
    else:
        pairs = []
        all_ok = False
        result["error"] = "A and B must both be existing files or both be folders"
    for name, path_a, path_b in pairs:
        ok, entry = compare_files(name, path_a, path_b, args.tolerance)
        result["files"].append(entry)
        result["compared"] += 1
        all_ok = all_ok and ok
    result["ok"] = bool(all_ok and pairs)
    if a_is_dir and b_is_dir and not pairs and not result["only_in_a"] and not result["only_in_b"]:
        result["error"] = "both folders are empty"
    print("@@CMP " + json.dumps(result, sort_keys=True))
    sys.stdout.flush()
    sys.exit(0 if result["ok"] else 1)


try:
    main()
except SystemExit:
    raise
except Exception:
    traceback.print_exc()
    print("@@CMP " + json.dumps({"ok": False, "compared": 0, "files": [], "only_in_a": [], "only_in_b": [],
                                 "error": "compare_images.py crashed"}))
    sys.stdout.flush()
    sys.exit(1)
