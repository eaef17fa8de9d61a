"""The code part of the feature cache's key: a digest of exactly the code that computes a feature.

A cached feature may be served only to a run whose code would compute the same numbers. Which
code that is follows from the code itself: starting from a few named functions and classes (the
roots, `frozen.PIXEL_CODE`: a file's decoding, the store's read-back, the transforms, the frozen
network), every module-level function, class and constant of the package that they name is
followed, and what those name, and so on. Each definition reached is read as Python's syntax
tree, less what cannot change a number:

- docstrings, comments and layout;
- calls that only make words (`print`, a progress bar, a warning line: `WORDS`) and the words
  of a `raise`; such calls are blanked and not followed, so a reworded warning, progress label
  or error keeps the key;
- class attributes that only name things for people (`WORD_ATTRIBUTES`).

Nothing is imported: the package's files are parsed as they are on disk, so a test can digest
an edited copy of the package. Whatever no root reaches (the scheduling around the network, the
cache itself, the head, the scripts) is not in the digest, and editing it keeps every cached
feature. A name that cannot be resolved statically (a method called on an object passed in) is
not followed: its class must be a root.
"""

import ast
import copy
import hashlib
import os

# Calls that only make words: blanked, their arguments too, and never followed.
WORDS = frozenset({"print", "progress", "say", "warn", "damage_warning", "skip_warning",
                   "_decoder_message"})
# Class attributes that name things for people (a progress bar's label, the cache line's name).
WORD_ATTRIBUTES = frozenset({"entries", "label", "what"})
# Module-level calls that import a module (lazily): not code of the package.
IMPORTERS = frozenset({"lazy_import"})


def _called_name(call):
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


class _WithoutWords(ast.NodeTransformer):
    """A definition's syntax tree less docstrings, word-making calls and the words of a
    `raise` (comments and layout are not in the tree)."""

    def _without_docstring(self, node):
        body = node.body
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
        return self.generic_visit(node)

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = (
        _without_docstring)

    def visit_Raise(self, node):
        return _Blank().visit(node)

    def visit_Call(self, node):
        if _called_name(node) in WORDS:
            return ast.Constant("")
        return self.generic_visit(node)


class _Blank(ast.NodeTransformer):
    """Every string in a message, f-strings and their values too, as one empty string."""

    def visit_JoinedStr(self, node):
        return ast.Constant("")

    def visit_Constant(self, node):
        return ast.Constant("") if isinstance(node.value, str) else node


class _Module:
    """One module of the package, parsed: its top-level definitions and what it imports."""

    def __init__(self, package, name):
        self.name = name
        path = os.path.join(package.folder, *name.split("."))
        path = path + ".py" if os.path.isfile(path + ".py") else os.path.join(path, "__init__.py")
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
        self.is_package = path.endswith("__init__.py")
        self.definitions, self.imported = {}, {}  # name -> node; name -> (module, name or None)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.definitions[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                if isinstance(node.value, ast.Call) and _called_name(node.value) in IMPORTERS:
                    continue
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name_node in ast.walk(target):
                        if isinstance(name_node, ast.Name):
                            self.definitions[name_node.id] = node
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = self._relative(node.level, node.module)
                for alias in node.names:
                    if package.is_module(f"{base}.{alias.name}" if base else alias.name):
                        module = f"{base}.{alias.name}" if base else alias.name
                        self.imported[alias.asname or alias.name] = (module, None)
                    else:
                        self.imported[alias.asname or alias.name] = (base, alias.name)

    def _relative(self, level, module):
        parts = self.name.split(".")
        parts = parts if self.is_package else parts[:-1]
        parts = parts[:len(parts) - (level - 1)]
        return ".".join(parts + ([module] if module else []))


class _Package:
    def __init__(self, folder):
        self.folder = folder
        self.modules = {}

    def is_module(self, name):
        path = os.path.join(self.folder, *name.split("."))
        return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))

    def module(self, name):
        if name not in self.modules:
            self.modules[name] = _Module(self, name)
        return self.modules[name]

    def resolve(self, module, name):
        """(module, definition name) that `name` means in `module`, a module's name for a
        module, or None for anything outside the package."""
        if name in module.definitions:
            return module.name, name
        if name in module.imported:
            target, attribute = module.imported[name]
            if attribute is None:
                return target, None
            if self.is_module(target):
                return self.resolve(self.module(target), attribute)
        return None


def _referenced(node):
    """Names `node` uses, and (name, attribute) pairs of attributes read off a name."""
    names, attributes = set(), set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            names.add(child.id)
        elif isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name):
            attributes.add((child.value.id, child.attr))
    return names, attributes


def reached(folder, roots):
    """{"module.name": the definition's syntax tree, less words} of every definition of the
    package in `folder` that `roots` ("module.name", or "module.Class.method") reach."""
    package = _Package(folder)
    found, queue = {}, []
    for root in roots:
        module_name, _, name = root.rpartition(".")
        if package.is_module(module_name):
            queue.append((module_name, name, None))
        else:  # a method: the method, and the constants of its class
            module_name, _, class_name = module_name.rpartition(".")
            queue.append((module_name, class_name, name))
    while queue:
        module_name, name, method = queue.pop()
        qualified = ".".join(filter(None, (module_name, name, method)))
        if qualified in found:
            continue
        module = package.module(module_name)
        node = copy.deepcopy(module.definitions[name])
        if method is not None:
            node = ast.ClassDef(name=name, bases=node.bases, keywords=[], decorator_list=[],
                                body=[statement for statement in node.body
                                      if not isinstance(statement, (ast.FunctionDef,
                                                                    ast.AsyncFunctionDef))
                                      or statement.name == method])
        if isinstance(node, ast.ClassDef):
            node.body = [statement for statement in node.body
                         if not (isinstance(statement, ast.Assign) and any(
                             isinstance(t, ast.Name) and t.id in WORD_ATTRIBUTES
                             for t in statement.targets))] or [ast.Pass()]
        node = _WithoutWords().visit(node)
        found[qualified] = node
        names, attributes = _referenced(node)
        for used in names:
            target = package.resolve(module, used)
            if target is not None and target[1] is not None:
                queue.append((*target, None))
        for owner, attribute in attributes:
            target = package.resolve(module, owner)
            if target is not None and target[1] is None:  # a module of the package
                inner = package.resolve(package.module(target[0]), attribute)
                if inner is not None and inner[1] is not None:
                    queue.append((*inner, None))
    return found


def code_digest(folder, roots):
    """SHA-256 of the code that `roots` reach in the package in `folder` (`reached`): what the
    code does changes it; how it is explained, and any code no root reaches, does not."""
    digest = hashlib.sha256()
    for name, node in sorted(reached(folder, roots).items()):
        digest.update(f"{name}\n{ast.dump(node)}\n".encode())
    return digest.hexdigest()
