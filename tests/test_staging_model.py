"""The staging layer against a model: random sequences of namespace operations, writes,
commits (some overlapping an operation, as a real commit does), commits by another writer and
crash recoveries. After every step the live view equals the model (a dict path -> content),
and after every commit the repository's tree equals what was committed."""
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import SMALL
from corafs import Repository
from corafs.view import ROOT_INODE, MountView
from corafs.view.staging import Staging

NAMES = st.sampled_from(["a", "b", "c", "d"])
DATA = st.binary(min_size=0, max_size=64)


class StagingMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.tmp = tempfile.mkdtemp(prefix="corafs-model-")
        self.repo = Repository.init(os.path.join(self.tmp, "repo"), tuning=SMALL)
        self._open()
        self.model: dict[str, object] = {}   # path -> bytes (file) or None (directory)
        self.touched: set[str] = set()          # written here since the last commit/sync
        self.other = 0

    def _open(self):
        self.st = Staging(self.repo, os.path.join(self.repo.path, "staging"), 0)
        self.view = MountView(self.repo, self.st)

    def teardown(self):
        self.st.close()
        self.repo.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------------
    def _node(self, path):
        n = self.view.lookup(ROOT_INODE, "main")
        for part in [p for p in path.split("/") if p]:
            n = self.view.peek(n.inode, part)
            if n is None:
                return None
        return n

    def _dirs(self):
        return [""] + [p for p, v in self.model.items() if v is None]

    def _files(self):
        return [p for p, v in self.model.items() if v is not None]

    @staticmethod
    def _join(d, name):
        return f"{d}/{name}" if d else name

    def _live(self) -> dict:
        out = {}

        def walk(node, prefix):
            for name, c in self.view.listdir(node.inode):
                p = self._join(prefix, name)
                if c.kind == "dir":
                    out[p] = None
                    walk(c, p)
                else:
                    r = self.view.open_reader(c.inode)
                    try:
                        out[p] = r.read(0, 1 << 20)
                    finally:
                        if hasattr(r, "close"):
                            r.close()
        walk(self.view.lookup(ROOT_INODE, "main"), "")
        return out

    def _committed(self) -> dict:
        out = {}
        for p, e in self.repo.walk(self.repo.head("main")):
            if e["kind"] == "dir":
                out[p.rstrip("/")] = None
            else:
                out[p] = self.repo.read_file(f"main:{p}")
        return out

    # -- operations -----------------------------------------------------------------------------
    @rule(data=st.data(), name=NAMES, content=DATA)
    def create(self, data, name, content):
        self._create(data.draw(st.sampled_from(self._dirs())), name, content)

    @rule(data=st.data(), items=st.lists(st.tuples(NAMES, st.one_of(st.none(), DATA)),
                                         min_size=2, max_size=6))
    def populate(self, data, items):
        """Several files and directories at once (so that renames and removals have a tree to
        work on)."""
        for name, content in items:
            d = data.draw(st.sampled_from(self._dirs()))
            if content is None:
                self._mkdir(d, name)
            else:
                self._create(d, name, content)

    def _mkdir(self, d, name):
        p = self._join(d, name)
        if p not in self.model:
            self.st.mkdir(self._node(d), name, 0o755)
            self.model[p] = None

    def _create(self, d, name, content):
        p = self._join(d, name)
        if p in self.model:
            return
        n, s, fd = self.st.create(self._node(d), name, 0o644)
        os.write(fd, content)
        os.close(fd)
        self.st.release(n, s)
        self.model[p] = content
        self.touched.add(p)

    @precondition(lambda self: self._files())
    @rule(data=st.data(), content=DATA, truncate=st.booleans())
    def overwrite(self, data, content, truncate):
        p = data.draw(st.sampled_from(self._files()))
        n = self._node(p)
        s, fd = self.st.open_write(n, truncate)
        os.pwrite(fd, content, 0)
        os.close(fd)
        self.st.release(n, s)
        old = self.model[p]
        self.model[p] = content if truncate else content + old[len(content):]
        self.touched.add(p)

    @rule(data=st.data(), name=NAMES)
    def mkdir(self, data, name):
        self._mkdir(data.draw(st.sampled_from(self._dirs())), name)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        p = data.draw(st.sampled_from(sorted(self.model)))
        d, _, name = p.rpartition("/")
        if self.model[p] is None:
            if any(q.startswith(p + "/") for q in self.model):
                try:
                    self.st.rmdir(self._node(d), name)
                    raise AssertionError("rmdir of a non-empty directory succeeded")
                except OSError:
                    return
            self.st.rmdir(self._node(d), name)
        else:
            self.st.unlink(self._node(d), name)
        del self.model[p]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), name=NAMES)
    def rename(self, data, name):
        src = data.draw(st.sampled_from(sorted(self.model)))
        d2 = data.draw(st.sampled_from(self._dirs()))
        dst = self._join(d2, name)
        d1, _, n1 = src.rpartition("/")
        is_dir = self.model[src] is None
        ok = True
        if dst == src:
            pass
        elif is_dir and (dst + "/").startswith(src + "/"):
            ok = False                                     # into itself
        elif dst in self.model:
            target_dir = self.model[dst] is None
            if is_dir and (not target_dir or any(q.startswith(dst + "/") for q in self.model)):
                ok = False
            elif not is_dir and target_dir:
                ok = False
        try:
            self.st.rename(self._node(d1), n1, self._node(d2), name)
        except OSError:
            assert not ok, f"rename {src} -> {dst} refused"
            return
        assert ok, f"rename {src} -> {dst} should have been refused"
        if dst == src:
            return
        for q in [q for q in self.model if q == dst or q.startswith(dst + "/")]:
            del self.model[q]
        moved = {q: v for q, v in self.model.items() if q == src or q.startswith(src + "/")}
        for q in moved:
            del self.model[q]
        for q, v in moved.items():
            self.model[dst + q[len(src):]] = v
            self.touched.add(dst + q[len(src):])

    @precondition(lambda self: self.model)
    @rule()
    def commit(self):
        self.st.commit("main")
        assert self._committed() == self.model
        self.touched.clear()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), name=NAMES)
    def commit_overlapping_an_unlink(self, data, name):
        """A commit during which a file or empty directory is removed: the removal stays."""
        candidates = [p for p, v in self.model.items()
                      if v is not None or not any(q.startswith(p + "/") for q in self.model)]
        if not candidates:
            return
        p = data.draw(st.sampled_from(sorted(candidates)))
        d, _, n = p.rpartition("/")
        real = self.repo.commit_changes
        ran = []

        def commit_changes(*a, **k):
            if self.model[p] is None:
                self.st.rmdir(self._node(d), n)
            else:
                self.st.unlink(self._node(d), n)
            ran.append(p)
            return real(*a, **k)
        self.repo.commit_changes = commit_changes
        try:
            snapshot = dict(self.model)
            self.st.commit("main")
        finally:
            self.repo.commit_changes = real
        if ran:                                   # nothing to commit: no commit, no unlink
            del self.model[p]
            assert self._committed() == snapshot, "the commit holds the state before the unlink"
        self.touched.clear()                      # all committed (the unlink is a removal)

    @rule(content=DATA)
    def other_writer_commits(self, content):
        """Another process commits a new file: it appears, nothing local is lost."""
        self.other += 1
        name = f"other{self.other}"
        src = os.path.join(self.tmp, name)
        with open(src, "wb") as f:
            f.write(content)
        self.repo.commit("main", {name: src})
        self.view.refresh()
        self.model[name] = content

    @rule(data=st.data())
    def other_writer_deletes(self, data):
        """Another process deletes a top-level file of the head: it disappears here unless
        this mount changed it since (then the local version stays, ours wins)."""
        with_files = [p for p, e in self.repo.listdir(self.repo.head("main")).items()
                      if e["kind"] == "file"]
        if not with_files:
            return
        q = data.draw(st.sampled_from(sorted(with_files)))
        self.repo.commit_changes("main", {q: None}, f"delete {q}")
        self.view.refresh()
        if q in self.model and q not in self.touched and self.model[q] is not None:
            del self.model[q]

    @precondition(lambda self: len(self.model) >= 3)
    @rule()
    def crash_and_recover(self):
        """The daemon dies (every file is closed and made durable first, as the committer
        would have done): a new staging area recovers everything."""
        self.st.ingest_ready()
        self.st.journal.close()
        self._open()
        self.st.recover()
        self.st.commit_all()
        assert self._committed() == self.model
        self.touched.clear()

    @invariant()
    def view_matches_model(self):
        if hasattr(self, "view"):
            assert self._live() == self.model


StagingMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_staging_matches_a_model = StagingMachine.TestCase
