"""Reads a Gunicorn configuration file for rgun (in a short-lived child process).

Input: the path (or "python:module"), rgun's table of settings and the hook names. Output: the
command-line arguments the file's settings amount to, warnings about names rgun does
not know, and the hooks it defines. Type errors name the setting.
"""

import importlib
import json
import runpy
import types

def read_namespace(location):
    if location.startswith("python:"):
        return vars(importlib.import_module(location[len("python:"):]))
    return runpy.run_path(location, run_name="__config__")


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
        if entry is None:
            if not callable(value):
                unknown.append(name)
            continue
        flag, kind = entry
        args.extend(convert(name, flag, kind, value))
    return json.dumps({"args": args, "unknown": sorted(unknown), "hooks": sorted(hooks)})


def convert(name, flag, kind, value):
    def bad(expected):
        raise TypeError("setting %r must be %s, got %r" % (name, expected, value))

    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            bad("an integer")
        # int(): an IntEnum such as ssl.CERT_REQUIRED prints as its name before 3.11.
        return [flag, str(int(value))]
    if kind == "octal":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            bad("an integer file mode")
        return [flag, format(value, "o") if isinstance(value, int) else value]
    if kind == "bool":
        if not isinstance(value, bool):
            bad("True or False")
        return [flag] if value else []
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
