"""Print a pip constraints file pinning every dependency of pyproject.toml to its lower bound
(``name>=X`` -> ``name==X``), so that a CI leg installs and tests the oldest versions the
project claims to support. Dependencies without a lower bound are left to the resolver."""
import re
import sys
import tomllib

with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as f:
    pyproject = tomllib.load(f)
project = pyproject["project"]
wanted = set(sys.argv[2].split(",")) if len(sys.argv) > 2 else None
# the build backend too: the lowest leg builds without isolation, with these
reqs = list(pyproject.get("build-system", {}).get("requires", [])) + list(project["dependencies"])
for extra, deps in project.get("optional-dependencies", {}).items():
    if wanted is None or extra in wanted:
        reqs += deps
pins = {}
for r in reqs:
    m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", r)
    name, spec = m.group(1).lower(), m.group(3)
    low = re.search(r">=\s*([0-9][^,;\s]*)", spec)
    if low:
        pins[name] = low.group(1)
for name, version in sorted(pins.items()):
    print(f"{name}=={version}")
