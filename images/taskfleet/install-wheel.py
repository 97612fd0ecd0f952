"""Install a pure-Python wheel with nothing but the standard library.

Used by the Dockerfile because Debian's python3 (taskfleet-base) has no pip,
and pip from PyPI is unreachable during the build. A wheel is a zip: unpack it
into the interpreter's purelib, write its console scripts, compile bytecode.
Works the same on python:3.13-slim (purelib is /usr/local/lib/python3.13/
site-packages there, /usr/local/lib/python3.13/dist-packages on Debian).

    python3 install-wheel.py WHEEL...
"""

import compileall
import configparser
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


def install(wheel: pathlib.Path) -> None:
    purelib = pathlib.Path(sysconfig.get_path("purelib"))
    purelib.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        # Our wheel is pure Python: anything else (data, headers, scripts) is a mistake.
        unexpected = [n for n in names if n.split("/", 1)[0].endswith(".data")]
        if unexpected:
            sys.exit(f"install-wheel: {wheel.name} has .data entries {unexpected[:3]}")
        zf.extractall(purelib)
    dist_info = next(purelib.glob(wheel.name.split("-")[0] + "-*.dist-info"))
    (dist_info / "INSTALLER").write_text("taskfleet-image\n")
    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.optionxform = str  # keep script names as written
    entry_points.read(dist_info / "entry_points.txt")
    if entry_points.has_section("console_scripts"):
        for name, target in entry_points.items("console_scripts"):
            module, func = (part.strip() for part in target.split(":", 1))
            script = BIN / name
            script.write_text(SCRIPT.format(python=sys.executable, module=module, func=func))
            script.chmod(0o755)
            print(f"install-wheel: {script} -> {module}:{func}")
    for top in {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}:
        if (purelib / top).is_dir():
            # Precompiled: the image starts faster and never writes .pyc at run time.
            compileall.compile_dir(purelib / top, quiet=1)
    print(f"install-wheel: {wheel.name} -> {purelib}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: install-wheel.py WHEEL...")
    for arg in sys.argv[1:]:
        install(pathlib.Path(arg))
