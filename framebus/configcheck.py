"""What a bad configuration is told, and what ``framebus check-config`` checks beyond parsing.

Every problem of a file is listed (a typo often shows twice, as an unknown key and as the
required key it misses: hiding either hides the cause), an unknown key gets "did you mean" from
the keys valid at its place, and check-config also finds what only ``run`` would trip over: a
subscriber FIFO in a directory that does not exist, a file with no cameras at all.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from framebus.errors import ConfigError

if TYPE_CHECKING:
    from framebus.config import Config

_SECRET_WORDS = ("password", "url", "token", "secret")  # values under these keys never echo


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The pydantic model an annotation is, or holds in a union (``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (model := _model_in(arg)) is not None:
                return model
    return None


def _step(annotation: object, part: int | str) -> object | None:
    """The annotation one location part down (a field, a dict value, a list item)."""
    model = _model_in(annotation)
    if model is not None:
        field = model.model_fields.get(str(part))
        return None if field is None else typing.cast(object, field.annotation)
    for arg in (annotation, *typing.get_args(annotation)):  # dict[...] | None, list[...]
        origin, args = typing.get_origin(arg), typing.get_args(arg)
        if origin is dict and isinstance(part, str):
            return typing.cast(object, args[1])
        if origin is list and isinstance(part, int):
            return typing.cast(object, args[0])
    return None


def keys_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys valid in the mapping at ``loc`` (e.g. a camera's for cameras.front); [] when
    the place is not a model."""
    annotation: object | None = model
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    found = _model_in(annotation)
    return list(found.model_fields) if found is not None else []


def describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    """One problem as ``key.path: what is wrong``; an unknown key with a near valid one gets
    "did you mean"; a value under a secret-looking key is never echoed."""
    path = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        near = difflib.get_close_matches(key, keys_at(model, error["loc"][:-1]), n=1)
        return f"{path}: unknown key" + (f" (did you mean {near[0]!r}?)" if near else "")
    if kind == "missing":
        return f"{path}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    secret = any(word in str(part) for part in error["loc"] for word in _SECRET_WORDS)
    if kind != "value_error" and not secret and isinstance(value, str | int | float | bool):
        message += f", got {value!r}"
    if kind == "literal_error" and isinstance(value, str) and not secret:
        allowed = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        near = difflib.get_close_matches(value, allowed, n=1)
        message += f" (did you mean {near[0]!r}?)" if near else ""
    # a model's check that names one of its keys ("hwaccel_device: ...") points at that key
    key, _, rest = message.partition(": ")
    if kind == "value_error" and rest and key in keys_at(model, error["loc"]):
        path, message = f"{path}.{key}" if path else key, rest
    return f"{path}: {message}" if path else message


def problems_error(source: str, problems: list[str]) -> ConfigError:
    """One ConfigError for every problem: one line still (logs and the CLI print one), the
    problems joined with "; " and counted when there are several."""
    if len(problems) == 1:
        return ConfigError(f"{source}: {problems[0]}", problems)
    return ConfigError(f"{source}: {len(problems)} problems: " + "; ".join(problems), problems)


def validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    """Every problem pydantic found, unknown keys first (usually the cause of the rest)."""
    errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
    return problems_error(source, [describe(error, model) for error in errors])


def fifo_problems(config: Config) -> list[str]:
    """Subscriber FIFOs ``run`` could not make: their directory does not exist (the daemon
    makes fifo_dir itself, never another directory, so a typo fails instead of growing a
    tree). The words are ``run``'s."""
    problems = []
    for name in config.subscribers:
        path = config.fifo_path(name)
        if path.parent != config.fifo_dir and not path.parent.is_dir():
            problems.append(f"subscribers.{name}.fifo: {path}: cannot create the FIFO: "
                            f"directory {path.parent} does not exist (framebus makes only "
                            "fifo_dir itself)")
    return problems


def check_passwords(config: Config, environ: dict[str, str] | None = None) -> list[str]:
    """For ``framebus check-config``: resolve every password that can be resolved here and
    return warnings for those that can only be checked where the service runs (a systemd
    credential without $CREDENTIALS_DIRECTORY, an unset environment variable); a file that
    cannot be read is still an error (ConfigError)."""
    from framebus.config import resolve_password

    env = os.environ if environ is None else environ
    warnings = []
    for name, camera in config.cameras.items():
        where = f"cameras.{name}"
        if camera.password_credential is not None and not env.get("CREDENTIALS_DIRECTORY"):
            warnings.append(f"{where}.password_credential: not checked: $CREDENTIALS_DIRECTORY "
                            "is not set here (systemd sets it from LoadCredential=; set it to a "
                            "directory holding the files to check them)")
        elif camera.password_env is not None and camera.password_env not in env:
            warnings.append(f"{where}.password_env: not checked: {camera.password_env} is not "
                            "set here (it must be in the service's environment)")
        else:
            resolve_password(camera, name)
    return warnings


def check_tls(config: Config, environ: dict[str, str] | None = None) -> list[str]:
    """For ``framebus check-config``: load the HTTPS certificate and key as ``run`` would
    (ConfigError when they do not load); a warning when they are systemd credentials that
    only the service can see."""
    from framebus.tlsconfig import server_context

    env = os.environ if environ is None else environ
    http = config.http
    if not http.enabled or not http.tls:
        return []
    if ((http.tls_cert_credential or http.tls_key_credential)
            and not env.get("CREDENTIALS_DIRECTORY")):
        return ["http.tls_cert_credential/tls_key_credential: not checked: "
                "$CREDENTIALS_DIRECTORY is not set here (systemd sets it from LoadCredential=)"]
    server_context(http)
    return []


def check_file(path: str | os.PathLike[str], environ: dict[str, str] | None = None
               ) -> tuple[Config, list[str]]:
    """``framebus check-config``: the config and its warnings (passwords that can only be
    checked where the service runs, a file without cameras); ConfigError listing every
    problem ``run`` would fail on."""
    from framebus.config import load_config

    config = load_config(path)
    problems = fifo_problems(config)
    if problems:
        raise problems_error(str(path), problems)
    from framebus.hwdecode.probe import host_warnings

    warnings = check_passwords(config, environ) + check_tls(config, environ)
    warnings += host_warnings((name, camera.decoding) for name, camera in config.cameras.items())
    if not config.cameras:
        empty = not Path(path).read_text().strip()
        what = "the file is empty" if empty else "no cameras are configured"
        warnings.append(f"{path}: {what}: the daemon would run with nothing to decode (see "
                        "config/framebus.yaml for an example)")
    return config, warnings
