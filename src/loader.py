"""Importing the application, loaded by rgun's `loader` module: resolving the
MODULE:CALLABLE spec the way Gunicorn does, and telling ASGI applications apart.
"""

import ast
import importlib
import inspect

def import_app(spec):
    """Gunicorn's rules: MODULE[:EXPR], EXPR a name, a dotted attribute path, or a
    call of one with literal arguments (a factory such as create_app())."""
    module_name, _, expression = spec.partition(":")
    if not module_name:
        raise ImportError("no module in application spec %r" % spec)
    expression = expression or "application"
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise ImportError("failed to parse %r as an attribute name or function call" % expression) from None
    if isinstance(tree, ast.Call):
        target, call = tree.func, tree
    else:
        target, call = tree, None
    names = []
    while isinstance(target, ast.Attribute):
        names.insert(0, target.attr)
        target = target.value
    if not isinstance(target, ast.Name):
        raise ImportError("failed to parse %r as an attribute name or function call" % expression)
    names.insert(0, target.id)
    if call is not None:
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except ValueError:
            raise ImportError("failed to parse arguments as literal values: %r" % expression) from None
    module = importlib.import_module(module_name)
    app = module
    for name in names:
        try:
            app = getattr(app, name)
        except AttributeError:
            raise ImportError("failed to find attribute %r in %r" % (".".join(names), module_name)) from None
    if call is not None:
        app = app(*args, **kwargs)
    if app is None:
        raise ImportError("the application object %r in %r is None" % (expression, module_name))
    if not callable(app):
        raise ImportError("application object %r in %r must be callable" % (expression, module_name))
    return app


def import_wsgi_app(spec):
    """import_app, refusing an ASGI application: called as WSGI, every request
    would fail."""
    app = import_app(spec)
    if is_asgi(app):
        raise ImportError(
            "%s is an ASGI application: run it with -k asgi "
            "(worker_class = \"asgi\" in a configuration file)" % spec
        )
    return app


def is_asgi(app):
    """A coroutine function, or an object whose __call__ is one (Starlette, FastAPI,
    Django's ASGIHandler): how Uvicorn tells ASGI 3 applications apart."""
    if inspect.isclass(app):
        return False
    return _is_coroutine_function(app) or _is_coroutine_function(
        getattr(type(app), "__call__", None)
    )


def _is_coroutine_function(f):
    # asgiref's markcoroutinefunction sets this marker on sync-looking wrappers.
    return inspect.iscoroutinefunction(f) or getattr(f, "_is_coroutine", None) is not None
