"""A store wrapper that crashes its process at a chosen step, for deterministic crash tests.

``CORAFS_FAULT=<event>:<n>`` in the environment of a corafs process makes it exit at once
(``os._exit(FAULT_EXIT)``: no cleanup, no flush, as a SIGKILL would) just before the n-th
event of that kind would happen:

  put   an object added to a batch (``ObjectWriter.put``)
  seal  a batch made durable and visible (``ObjectWriter.commit``)
  ref   a ref moved (``ObjectStore.cas_ref``)
  drop  packs deleted by a repack or gc (``remove_packs``)
  pack  a step inside writing a local pack file (``hdf5pack.PackWriter.finish``: the HDF5
        file made, its data copied and fsynced, renamed into place, its ``.idx`` written),
        the one event below the store interface: a pack's own steps are its format's

A test runs a command with n = 1, 2, ... until it exits 0 (the fault was past its last event),
so every step is hit once, whatever the machine's speed. Without the variable, ``wrap`` returns
the store itself: no wrapper, no cost.
"""
from __future__ import annotations

import os
import threading
from typing import Optional

from .base import ObjectStore, ObjectWriter

#: the exit status of a process the fault stopped
FAULT_EXIT = 86
EVENTS = ("put", "seal", "ref", "drop", "pack")


class _Plan:
    def __init__(self, spec: str):
        kind, _, n = spec.partition(":")
        if kind not in EVENTS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"CORAFS_FAULT={spec!r}: expected <{'|'.join(EVENTS)}>:<n >= 1>")
        self.kind, self.n = kind, int(n)
        self.seen = 0
        self.lock = threading.Lock()

    def step(self, kind: str) -> None:
        if kind != self.kind:
            return
        with self.lock:
            self.seen += 1
            if self.seen == self.n:
                os._exit(FAULT_EXIT)


class _Writer(ObjectWriter):
    def __init__(self, inner: ObjectWriter, plan: _Plan):
        self.inner, self.plan = inner, plan

    def put(self, oid: str, data) -> None:
        self.plan.step("put")
        self.inner.put(oid, data)

    def has(self, oid: str) -> bool:
        return self.inner.has(oid)

    def commit(self) -> None:
        self.plan.step("seal")
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class FaultStore:
    """Every call goes to the wrapped store; writers and ref moves count their steps."""

    def __init__(self, inner: ObjectStore, plan: _Plan):
        self.inner, self.plan = inner, plan

    def writer(self, *a, **k) -> ObjectWriter:
        return _Writer(self.inner.writer(*a, **k), self.plan)

    def cas_ref(self, name: str, expected: Optional[str], new: Optional[str]) -> None:
        self.plan.step("ref")
        self.inner.cas_ref(name, expected, new)

    def remove_packs(self, names) -> int:
        self.plan.step("drop")
        return self.inner.remove_packs(names)

    def __getattr__(self, name):
        return getattr(self.inner, name)


ObjectStore.register(FaultStore)


_plan: Optional[_Plan] = None


def _the_plan(spec: str) -> _Plan:
    """One plan per process: every store and pack writer counts the same steps."""
    global _plan
    if _plan is None or f"{_plan.kind}:{_plan.n}" != spec:
        _plan = _Plan(spec)
    return _plan


def wrap(store: ObjectStore) -> ObjectStore:
    """``store``, wrapped when ``CORAFS_FAULT`` asks for a fault."""
    spec = os.environ.get("CORAFS_FAULT")
    return FaultStore(store, _the_plan(spec)) if spec else store


def point(kind: str) -> None:
    """A step inside a store's own machinery (``pack``); nothing when no fault is asked for."""
    spec = os.environ.get("CORAFS_FAULT")
    if spec:
        _the_plan(spec).step(kind)
