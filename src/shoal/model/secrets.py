"""Secret and config specs and the references services make to them: validation with Docker's messages.

Facts from swarmkit's controlapi (secret.go, config.go, service.go) and moby's API router: ``Data`` is
base64 in JSON; a secret holds 1 byte to under 500 KiB, a config 1 byte to under 1000 KiB; names are
up to 64 of ``[a-zA-Z0-9-_.]`` starting and ending alphanumerically; only ``Labels`` may change.
"""

from __future__ import annotations

import copy
import posixpath
import re
from typing import Any, Literal

from shoal.model.errors import BadRequest, InvalidArgument

Kind = Literal["secrets", "configs"]
SINGULAR: dict[str, str] = {"secrets": "secret", "configs": "config"}
MAX_SIZE: dict[str, int] = {"secrets": 500 * 1024, "configs": 1000 * 1024}
SECRETS_DIR = "/run/secrets"

_NAME_RE = re.compile(r"[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def decode_base64(text: str) -> bytes:
    """Decode standard padded base64 as Go's ``encoding/json`` does for ``[]byte`` (newlines skipped);
    bad input raises :class:`BadRequest` with Go's message (``illegal base64 data at input byte N``)."""
    out = bytearray()
    si, n = 0, len(text)
    while True:
        quantum: list[int] = []
        while len(quantum) < 4:
            if si == n:
                if not quantum:
                    return bytes(out)
                raise _bad_base64(si - len(quantum))
            c = text[si]
            si += 1
            if c in "\r\n":
                continue
            value = _B64_VALUE.get(c)
            if value is not None:
                quantum.append(value)
                continue
            if c != "=" or len(quantum) < 2:
                raise _bad_base64(si - 1)
            if len(quantum) == 2:  # a second "=" must follow
                while si < n and text[si] in "\r\n":
                    si += 1
                if si == n:
                    raise _bad_base64(n)
                if text[si] != "=":
                    raise _bad_base64(si - 1)
                si += 1
            while si < n and text[si] in "\r\n":
                si += 1
            if si < n:
                raise _bad_base64(si)
            _flush(out, quantum)
            return bytes(out)
        _flush(out, quantum)


def _flush(out: bytearray, quantum: list[int]) -> None:
    value = 0
    for v in quantum:
        value = (value << 6) | v
    value <<= 6 * (4 - len(quantum))
    out.extend(value.to_bytes(3, "big")[:len(quantum) - 1])


def _bad_base64(offset: int) -> BadRequest:
    return BadRequest(f"invalid JSON: illegal base64 data at input byte {offset}")


def validate_name(name: Any) -> str:
    if not name:
        raise InvalidArgument("name must be provided")
    if not isinstance(name, str) or len(name) > 64 or not _NAME_RE.fullmatch(name):
        raise InvalidArgument("invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end "
                              "character must be [a-zA-Z0-9]")
    return name


def validate_spec(kind: Kind, body: dict) -> tuple[dict, bytes]:
    """A SecretSpec or ConfigSpec from a create request (canonical, as shoal.api.decode makes it):
    (spec without ``Data``, the decoded data)."""
    data = decode_base64(body.get("Data") or "")
    spec: dict[str, Any] = {"Name": body.get("Name") or "", "Labels": dict(body.get("Labels") or {})}
    validate_name(spec["Name"])
    driver = body.get("Driver")
    if kind == "secrets" and driver:
        if not driver.get("Name"):
            raise InvalidArgument("secret driver must have a name")
        raise InvalidArgument(f"shoal has no secret drivers: the secret driver {driver['Name']!r} cannot be used; "
                              "create the secret with its data instead")
    if len(data) >= MAX_SIZE[kind] or len(data) < 1:
        raise InvalidArgument(f"{SINGULAR[kind]} data must be larger than 0 and less than {MAX_SIZE[kind]} bytes")
    if body.get("Templating"):
        spec["Templating"] = copy.deepcopy(body["Templating"])
    return spec, data


def read_update(kind: Kind, body: dict) -> tuple[str, dict[str, str], bytes | None]:
    """An update request's spec (canonical): (name, labels, data or None when not given)."""
    raw = body.get("Data")
    return body.get("Name") or "", dict(body.get("Labels") or {}), decode_base64(raw) if raw else None


def check_update(current: dict, update: tuple[str, dict[str, str], bytes | None], current_data: bytes) -> dict:
    """An update may only change Labels (swarmkit compares Name and, when given, Data); the new labels."""
    name, labels, data = update
    if name != current["Spec"]["Name"] or (data is not None and data != current_data):
        raise InvalidArgument("only updates to Labels are allowed")
    return labels


# -- references from a service's ContainerSpec ----------------------------------------------------------

def references(spec: dict, kind: Kind) -> list[dict]:
    """The ``Secrets`` or ``Configs`` references of a ServiceSpec (or TaskSpec)."""
    tt = spec.get("TaskTemplate", spec)
    cs = (tt or {}).get("ContainerSpec") or {}
    refs = cs.get("Secrets" if kind == "secrets" else "Configs") or []
    return refs if isinstance(refs, list) else []


def validate_refs(spec: dict) -> None:
    """swarmkit's checks of secret and config references (in a canonical spec): IDs and names given, a
    file target each, no two references on one target."""
    cs = ((spec.get("TaskTemplate") or {}).get("ContainerSpec")) or {}
    for kind, field in (("secrets", "Secrets"), ("configs", "Configs")):
        one = SINGULAR[kind]
        targets: dict[str, str] = {}
        for ref in cs.get(field) or []:
            rid, rname = ref.get(f"{one.title()}ID"), ref.get(f"{one.title()}Name")
            if not rid or not rname:
                raise InvalidArgument(f"malformed {one} reference")
            if ref.get("Runtime") is not None:
                raise InvalidArgument("shoal: config references with a runtime target (credential specs) are "
                                      "for Windows only")
            target = ref.get("File")
            if target is None:
                raise InvalidArgument(f"malformed {one} reference, no target provided")
            fname = target.get("Name") or ""
            if not fname:
                raise InvalidArgument(f"malformed file {one} reference, invalid target file name provided")
            if fname in targets:
                raise InvalidArgument(f"{one} references '{targets[fname]}' and '{rname}' have a conflicting "
                                      f"target: '{fname}'")
            targets[fname] = rname


def target_path(kind: Kind, file_name: str) -> str:
    """Where a referenced file appears in the container: absolute names as given; relative ones under
    ``/run/secrets`` (secrets) or ``/`` (configs), as Docker's daemon places them."""
    if file_name.startswith("/"):
        return posixpath.normpath(file_name)
    return posixpath.normpath(posixpath.join(SECRETS_DIR if kind == "secrets" else "/", file_name))


def file_owner(target: dict) -> tuple[int, int, int]:
    """(uid, gid, mode) of a reference's File target; Docker's defaults are root and 0444."""
    def num(value: Any, what: str) -> int:
        if value in (None, ""):
            return 0
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"invalid {what} {value!r}: must be numeric") from None

    mode = target.get("Mode")
    return num(target.get("UID"), "UID"), num(target.get("GID"), "GID"), 0o444 if mode is None else int(mode) & 0o7777
