"""No module of refflow uses a private name (``_name``) of another module.

Run from the repository root (``python .ci/private_names.py``). It reads every module of
``refflow/`` with ``ast`` (imports inside functions included) and reports

- ``from refflow.x import _name`` (absolute or relative) in a module other than ``refflow.x``;
- ``x._name`` where ``x`` is a refflow module bound by an import (``from . import optim``).

Private *modules* (``refflow.nn._blocked``) are checked by import-linter's private_modules
contract in ``.importlinter``; names of private root modules (``refflow._validation``) are public
to the whole package. ruff has no rule for this: its PLC2701 skips imports inside one package.

Exit status 1 if a use is found that is not in KNOWN below.
"""

import ast
import pathlib
import sys

# Known uses still to remove: (importing module, module of the name, name). Each line is debt:
# delete it once the name is public (a line that no longer matches is reported, not an error).
KNOWN = set()


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def _module_name(path, root):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def uses(root):
    """``[(path, line, importer, module, name)]`` for every cross-module private name."""
    root = pathlib.Path(root)
    paths = sorted((root / "refflow").rglob("*.py"))
    modules = {_module_name(p, root) for p in paths}
    found = []
    for path in paths:
        importer = _module_name(path, root)
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        bound = {}  # local name -> the refflow module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source != "refflow" and not source.startswith("refflow."):
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    if full in modules:      # a module, not a name (import-linter's part)
                        bound[alias.asname or alias.name] = full
                    elif _private(alias.name) and source != importer:
                        found.append((path, node.lineno, importer, source, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "refflow":
                        local = alias.asname or "refflow"
                        bound[local] = alias.name if alias.asname else "refflow"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and _private(node.attr)):
                source = bound[node.value.id]
                if f"{source}.{node.attr}" not in modules and source != importer:
                    found.append((path, node.lineno, importer, source, node.attr))
    return found


def main(root="."):
    found = uses(root)
    seen = set()
    new = []
    for path, line, importer, source, name in found:
        key = (importer, source, name)
        seen.add(key)
        if key not in KNOWN:
            new.append(f"{path}:{line}: {importer} uses {source}.{name}")
    for key in sorted(KNOWN - seen):
        print(f"note: no longer used, delete from KNOWN: {key}")
    print(f"private names used across modules: {len(found)} ({len(found) - len(new)} known, "
          f"{len(new)} new)")
    for line in new:
        print(line)
    if new:
        print("Use a public name (or move the shared piece to a module both may import).")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
