"""Checkpoint files entry by entry, for the tests that compare, rewrite or damage them, and
the one check that eigenlstm.load refuses a file and names it.

Written from the documented layout (eigenlstm.save's Notes), not from the package's private
code: an ``.npz`` whose zip comment is ``eigenlstm-sha256:`` and the SHA-256 (hex) of every byte
before it (format version 2 on).
"""

import hashlib
import io
import json
import re
import zipfile

import numpy as np
import pytest

import eigenlstm as el

DIGEST_PREFIX = b"eigenlstm-sha256:"
DIGEST_LEN = len(DIGEST_PREFIX) + 64


def contents(path):
    """(meta, arrays) of a checkpoint file."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("meta")[()])), arrays


def sign(data):
    """``data`` (a checkpoint's bytes) with its trailing digest recomputed over the rest."""
    body = data[:-DIGEST_LEN]
    return body + DIGEST_PREFIX + hashlib.sha256(body).hexdigest().encode()


def write(path, meta, arrays, *, signed=True):
    """Write a checkpoint of ``meta`` and ``arrays``; with ``signed``, with a valid digest."""
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    if signed:
        with zipfile.ZipFile(buf, "a") as z:
            z.comment = b"\0" * DIGEST_LEN  # the placeholder the digest replaces
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(sign(data) if signed else data)


def assert_load_refuses(path, message):
    """``el.load(path)`` raises ValueError ``eigenlstm.load: <path> <message>``, where ``message``
    is a regular expression and the error may go on after it."""
    with pytest.raises(ValueError, match=rf"^eigenlstm\.load: {re.escape(str(path))} {message}"):
        el.load(path)
