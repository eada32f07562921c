"""Checks `run.py` runs in the training interpreter before a bout: standard library only.

    python preflight.py imports MODULE...     # import the project's modules; exit 1 with one line on failure
    python preflight.py requirements < FILE   # print the JSON list of requirement lines not satisfied

`run.py` runs this file as a script with the interpreter that will run `train.py` (`python_venv_path`),
which may differ from its own and may not have the requirements yet: after a code sync the newly
synced modules must import (a requirement that is not installed yet only gets a syntax check), and
before training every line of `requirements.txt` (versions, extras, markers) must be satisfied.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import py_compile
import re
import sys
import traceback

try:
    from packaging.requirements import Requirement
except ImportError:
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:
        Requirement = None


# --------------------------------------------------------------------------- imports
def check_imports(names: list[str], folder: str) -> str | None:
    """Import each project module of `names` found in `folder`; the first problem as one line, or None."""
    sys.path.insert(0, folder)
    local = {f[:-3] for f in os.listdir(folder) if f.endswith(".py")}
    for name in names:
        if name not in local:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in local:
                return f"{name}.py: {e}"
            # a requirement that is not installed yet is the dependency check's job: check the syntax only
            try:
                py_compile.compile(os.path.join(folder, name + ".py"), doraise=True, cfile=os.devnull)
            except py_compile.PyCompileError as c:
                return f"{name}.py: " + str(c.exc_value).splitlines()[0]
        except BaseException as e:  # noqa: BLE001 - any failure of the synced code is reported, not raised
            return _where(e, name, folder) + f": {type(e).__name__}: {e}".splitlines()[0]
    return None


def _where(e: BaseException, name: str, folder: str) -> str:
    if isinstance(e, SyntaxError):
        return f"{os.path.basename(e.filename or name)}:{e.lineno}"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(folder)]
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else f"{name}.py"


# --------------------------------------------------------------------------- requirements
def satisfied(req_text: str, seen: set) -> bool:
    """Whether one requirement line (extras included, recursively) is installed in this interpreter."""
    if Requirement is None:  # no packaging at all: the distribution's presence is all we can check
        name = re.split(r"[\s\[<>=!~;@]", req_text, maxsplit=1)[0]
        try:
            md.version(name)
            return True
        except md.PackageNotFoundError:
            return False
    req = Requirement(req_text)
    if req.marker is not None and not req.marker.evaluate():
        return True
    key = (req.name.lower(), tuple(sorted(req.extras)))
    if key in seen:
        return True
    seen.add(key)
    try:
        dist = md.distribution(req.name)
    except md.PackageNotFoundError:
        return False
    if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
        return False
    for extra in req.extras:
        for sub in dist.requires or []:
            r = Requirement(sub)
            if r.marker is not None and r.marker.evaluate({"extra": extra}) and not satisfied(sub.split(";")[0], seen):
                return False
    return True


def missing(requirements_text: str) -> list[str]:
    """The requirement lines of a requirements file that this interpreter does not satisfy."""
    out = []
    for line in requirements_text.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith(("#", "-")) and not satisfied(line, set()):
            out.append(line)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["imports"]:
        problem = check_imports(argv[1:], os.getcwd())
        if problem:
            print(problem)
            return 1
        return 0
    if argv == ["requirements"]:
        print(json.dumps(missing(sys.stdin.read())))
        return 0
    print("usage: python preflight.py imports MODULE... | python preflight.py requirements < requirements.txt",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
