"""Install wheels with nothing but the standard library.

Used by the Dockerfile because Debian's python3 (taskfleet-base) has no pip,
and pip from PyPI is unreachable during the build. A wheel is a zip: its
files go to the interpreter's purelib or platlib (the WHEEL file's
Root-Is-Purelib says which), the ``<name>.data/<scheme>/`` folders to their
scheme's path, console scripts are written, bytecode is compiled. Works the
same on python:3.13-slim (site-packages there, dist-packages on Debian).

The wheels were chosen on the control node for this Python and platform
(``pip download`` for the images' tags), so nothing is resolved here: each
wheel is installed as it is, in the order given.

    python3 install-wheel.py WHEEL...
"""

import compileall
import configparser
import email.parser
import pathlib
import sys
import sysconfig
import zipfile

# Console scripts go to /usr/local/bin on both bases (it is on PATH).
BIN = pathlib.Path("/usr/local/bin")
# The __main__ guard matters: multiprocessing's spawn/forkserver children re-run the
# main script as __mp_main__, and without it each child would start the CLI again.
SCRIPT = """#!{python}
import sys
from {module} import {func}
if __name__ == "__main__":
    sys.exit({func}())
"""


def fail(wheel, why):
    sys.exit(f"install-wheel: {wheel.name}: {why}")


def destination(wheel, member, root, data_dir):
    """Where one member of the wheel goes, and whether it is a script."""
    top, _, rest = member.partition("/")
    if top != data_dir:
        return root / member, False
    scheme, _, rel = rest.partition("/")
    if scheme in ("purelib", "platlib", "data"):
        return pathlib.Path(sysconfig.get_path(scheme)) / rel, False
    if scheme == "scripts":
        return BIN / rel, True
    if scheme == "headers":
        # C headers only matter for building against the package, never at run time.
        return None, False
    fail(wheel, f"unknown data scheme {scheme!r} in {member}")
    return None, False


def install(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        tops = {n.split("/", 1)[0] for n in names}
        dist_infos = [t for t in tops if t.endswith(".dist-info")]
        if len(dist_infos) != 1:
            fail(wheel, f"expected one .dist-info folder, found {dist_infos}")
        dist_info = dist_infos[0]
        data_dir = dist_info[: -len(".dist-info")] + ".data"
        meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/WHEEL").decode())
        pure = str(meta.get("Root-Is-Purelib", "true")).strip().lower() == "true"
        root = pathlib.Path(sysconfig.get_path("purelib" if pure else "platlib"))
        for info in zf.infolist():
            if info.is_dir():
                continue
            if ".." in pathlib.PurePosixPath(info.filename).parts:
                fail(wheel, f"refusing a path outside the install folders: {info.filename}")
            dest, script = destination(wheel, info.filename, root, data_dir)
            if dest is None:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            data = zf.read(info)
            if script and data.startswith(b"#!python"):
                # The wheel spec's placeholder for "this interpreter".
                data = b"#!" + sys.executable.encode() + data[len(b"#!python") :]
            dest.write_bytes(data)
            if script:
                dest.chmod(0o755)
    (root / dist_info / "INSTALLER").write_text("taskfleet-image\n")
    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.optionxform = str  # keep script names as written
    entry_points.read(root / dist_info / "entry_points.txt")
    if entry_points.has_section("console_scripts"):
        for name, target in entry_points.items("console_scripts"):
            module, func = (part.strip() for part in target.split(":", 1))
            script = BIN / name
            script.write_text(SCRIPT.format(python=sys.executable, module=module, func=func))
            script.chmod(0o755)
            print(f"install-wheel: {script} -> {module}:{func}")
    for top in tops - {dist_info, data_dir}:
        path = root / top
        # Precompiled: the image starts faster and never writes .pyc at run time.
        if path.is_dir():
            compileall.compile_dir(path, quiet=1)
        elif path.suffix == ".py":
            compileall.compile_file(path, quiet=1)
    print(f"install-wheel: {wheel.name} -> {root}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: install-wheel.py WHEEL...")
    for arg in sys.argv[1:]:
        install(pathlib.Path(arg))
