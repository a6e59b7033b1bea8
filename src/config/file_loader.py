"""Reads a Gunicorn configuration file for rgun (in a short-lived child process).

Input: the path (or "python:module"), rgun's table of settings and the hook names. Output: the
command-line arguments the file's settings amount to, the names rgun does not know (or
does not provide, set to more than Gunicorn's default), and the hooks it defines. Type errors name the setting.
"""

import ast
import importlib
import json
import runpy
import traceback
import types


class FileRaised(Exception):
    """The file's own code raised: the text names where (file, line) and carries the
    traceback of the file's frames."""


def read_namespace(location):
    try:
        if location.startswith("python:"):
            return vars(importlib.import_module(location[len("python:"):]))
        return runpy.run_path(location, run_name="__config__")
    except BaseException as e:  # SystemExit too: a file that exits is a failed file
        raise FileRaised(describe(e, location)) from None


def describe(error, location):
    """`line N: Type: message` (`FILE, line N: ...` when it is another file the
    configuration file ran), then the traceback without the frames of this loader,
    runpy and importlib (the mistake is not there)."""
    te = traceback.TracebackException.from_exception(error)
    machinery = (__file__, runpy.__file__, importlib.__file__)
    frames = [f for f in te.stack
              if f.filename not in machinery and not f.filename.startswith("<frozen ")]
    te.stack = traceback.StackSummary.from_list(frames)
    if isinstance(error, SyntaxError) and error.filename:
        filename, line = error.filename, error.lineno
    elif frames:
        filename, line = frames[-1].filename, frames[-1].lineno
    else:
        filename, line = location, None
    summary = "".join(te.format_exception_only()).strip().splitlines()[-1]
    if line is None:
        return summary
    where = "line %s" % line if filename == location else "%s, line %s" % (filename, line)
    return "%s: %s\n%s" % (where, summary, "".join(te.format()).rstrip())


def to_args(location, table_json, hooks_json):
    table = json.loads(table_json)
    known_hooks = set(json.loads(hooks_json))
    namespace = read_namespace(location)
    args, unknown, hooks = [], [], []
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, type)):
            continue
        if name in known_hooks:
            if not callable(value):
                raise TypeError("hook %r must be callable" % name)
            hooks.append(name)
            continue
        entry = table.get(name)
        if name == "config":
            continue  # the file being read; as in Gunicorn, naming it changes nothing
        if entry is None:
            if not callable(value):
                unknown.append(name)
            continue
        flag, kind = entry
        if kind == "not_provided":
            # `flag` holds Gunicorn's default (as text): that value asks for nothing.
            if value and str(value) != flag and repr(value) != flag:
                unknown.append(name)
            continue
        args.extend(convert(name, flag, kind, value))
    return json.dumps({"args": args, "unknown": sorted(unknown), "hooks": sorted(hooks),
                       "lines": assignment_lines(location)})


def assignment_lines(location):
    """The line of each top-level name's last assignment in a configuration file (a
    bad value is reported there); empty for python:MODULE or a file that fails to
    parse (it ran, so that cannot be)."""
    if location.startswith("python:"):
        return {}
    try:
        with open(location, "rb") as f:
            tree = ast.parse(f.read(), location)
    except (OSError, SyntaxError, ValueError):
        return {}
    lines = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for t in targets:
            if isinstance(t, ast.Name):
                lines[t.id] = node.lineno
    return lines


def convert(name, flag, kind, value):
    def bad(expected):
        raise TypeError("setting %r must be %s, got %r" % (name, expected, value))

    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            bad("an integer")
        # int(): an IntEnum such as ssl.CERT_REQUIRED prints as its name before 3.11.
        return [flag, str(int(value))]
    if kind == "int_or_auto":
        if value == "auto":
            return [flag, "auto"]
        if isinstance(value, bool) or not isinstance(value, int):
            bad('an integer or "auto"')
        return [flag, str(int(value))]
    if kind == "octal":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            bad("an integer file mode")
        return [flag, format(value, "o") if isinstance(value, int) else value]
    if kind == "bool":
        if not isinstance(value, bool):
            bad("True or False")
        return [flag] if value else []
    if kind == "bool_off":
        # Gunicorn's `sendfile`: None (the default) and True use it, False is the flag.
        if value is not None and not isinstance(value, bool):
            bad("True, False or None")
        return [flag] if value is False else []
    if kind == "h2c":
        # Gunicorn 27 names the mechanism; rgun serves prior knowledge only.
        if value in (False, None, "off"):
            return []
        if value in (True, "prior-knowledge"):
            return [flag]
        bad('"off" or "prior-knowledge" (rgun has no h2c upgrade), or True/False')
    if kind == "str":
        if value is None:
            return []
        if isinstance(value, int) and not isinstance(value, bool) and name in ("user", "group", "ssl_version"):
            return [flag, str(value)]
        if not isinstance(value, str):
            bad("a string")
        return [flag, value]
    if kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            bad("a list of strings")
        out = []
        for v in value:
            out.extend([flag, v])
        return out
    if kind == "proxy":
        if value is True:
            return [flag, "auto"]
        if value is False or value is None:
            return []
        if not isinstance(value, str):
            bad("True, False or one of off, v1, v2, auto")
        return [flag, value]
    if kind == "dict":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            bad("a dict of header names to values")
        out = []
        for k, v in value.items():
            out.extend([flag, "%s=%s" % (k, v)])
        return out
    if kind == "json":
        if not value:
            return []
        if not isinstance(value, dict):
            bad("a dict (dictConfig's schema)")
        try:
            return [flag, json.dumps(value)]
        except (TypeError, ValueError):
            bad("a dict of plain values (strings, numbers, lists, dicts)")
    if kind == "csv":
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, str):
            bad("a string or a list of strings")
        return [flag, value]
    raise AssertionError(kind)
