"""One task per pipeline: follow the registry alias, deploy, hot-swap, watch, roll back.

The task never stops the pipeline: the registry unreachable, answering 5xx, 401 or garbage
leaves the running model scoring; the task retries with the agent's backoff policy and logs one
line per failure kind (and one when the registry answers again). Every step that matters to the
central team is an :class:`~edge_agent.records.Event` handed to ``put`` (the buffer: synced
upstream, sent over MQTT, shown on the page): ``model_version_found``, ``model_refused`` (with
the failed step), ``model_deployed``, ``model_loaded`` (the swap itself), ``model_in_service``,
``model_rolled_back``, ``model_staging_cleaned``, ``model_restore_failed``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_agent.backoff import Backoff
from edge_agent.models.bundle import MANIFEST_FILE, MODEL_FILE, ModelError
from edge_agent.models.onnx_score import ModelSlot, Scorer
from edge_agent.models.registry.client import (
    ModelVersion,
    RegistryClient,
    RegistryFailure,
    TooLarge,
    artifact_path,
)
from edge_agent.models.registry.config import RegistryConfig
from edge_agent.models.registry.deploy import BUNDLE_FILES, Refusal, Store, verify_staged
from edge_agent.models.registry.probation import Probation
from edge_agent.records import Event, Severity, format_ts

log = logging.getLogger(__name__)

__all__ = ["Probation", "RegistryPoller"]

Put = Callable[[list[Any]], Awaitable[None]]
FAILURE_MESSAGES = {  # one clear line per failure kind (then quiet until the kind changes)
    "unreachable": "registry unreachable; keeping the current model",
    "server_error": "registry server error; keeping the current model",
    "unauthorized": "registry refused the credentials; keeping the current model",
    "not_found": "registry has no such model or alias; keeping the current model",
    "garbage": "registry answered garbage; keeping the current model",
    "refused": "registry refused the request; keeping the current model",
    "credentials": "registry password unavailable; keeping the current model",
}
TICK = 0.25  # how often the task looks at state.json (a ``models rollback``) and the watch


class Swappable(Protocol):
    """What the poller needs of a pipeline's analysis (``edge_agent.agent.analysis``)."""

    source: str
    slot: ModelSlot | None
    score_watch: Callable[[np.ndarray | Exception], None] | None

    def swap_model(self, scorer: Scorer, ts: float, origin: dict[str, Any]) -> Event: ...

    def load_model(self, path: Path, ts: float) -> Event: ...


class RegistryPoller:
    def __init__(self, cfg: RegistryConfig, analysis: Swappable, state_dir: Path,
                 gateway_id: str, put: Put, *, configured_model: Path | None = None,
                 threads: int = 1, client: RegistryClient | None = None) -> None:
        self.cfg = cfg
        self.an = analysis
        self.source = analysis.source
        self.gateway_id = gateway_id
        self.put = put
        self.configured_model = configured_model
        self.threads = threads
        self.store = Store(state_dir, analysis.source)
        self._client = client
        initial = min(1.0, cfg.poll_interval)
        self.backoff = Backoff(initial=initial, maximum=max(initial, cfg.poll_interval))
        self.retrier = self.backoff.retrier()
        self.failing: str | None = None  # failure kind of the current streak
        self.probation: Probation | None = None
        self.running: str | None = None  # registry version the analysis runs now
        self._stamp = 0.0
        self.keys: list[bytes] = []
        self._fetch: tuple[ModelVersion, asyncio.Task[Path]] | None = None

    # -- helpers ------------------------------------------------------------------------------
    def _event(self, kind: str, severity: Severity = "info", **details: Any) -> Event:
        details.setdefault("registry", {"model_name": self.cfg.model_name,
                                        "alias": self.cfg.alias})
        return Event(kind, self.source, time.time(), severity, details)

    def client(self) -> RegistryClient:
        if self._client is None:
            try:
                pw = self.cfg.password.reveal() if self.cfg.password is not None else None
            except (LookupError, OSError) as exc:
                raise RegistryFailure("credentials", f"registry password: {exc}") from exc
            self._client = RegistryClient(self.cfg.tracking_uri, username=self.cfg.username,
                                          password=pw, timeout=self.cfg.timeout)
        return self._client

    def _expected(self) -> tuple[tuple[str, ...], dict[str, object]]:
        assert self.an.slot is not None
        return self.an.slot.expected_names, self.an.slot.expected_contract

    async def _load(self, version: str) -> Scorer:
        names, contract = self._expected()
        return await asyncio.to_thread(verify_staged, self.store.version_dir(version),
                                       self.keys, names, contract, threads=self.threads)

    # -- the task -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Runs until cancelled (at agent shutdown). Every change of the model in service
        (restore, swap, rollback) happens in this loop, one at a time."""
        try:
            self.keys = self.cfg.public_keys()
        except (OSError, ValueError) as exc:
            log.error("registry disabled: trusted key unusable",
                      extra={"source": self.source, "error": str(exc)})
            await self.put([self._event("registry_disabled", "warning", reason=str(exc))])
            return
        removed = self.store.prepare()
        if removed:
            log.warning("registry staging cleaned (interrupted download)",
                        extra={"source": self.source, "removed": removed})
            await self.put([self._event("model_staging_cleaned", "warning", removed=removed)])
        restored = False
        next_poll = 0.0
        try:
            while True:
                if self.an.slot is None:  # the extractor and its contract exist after block one
                    await asyncio.sleep(TICK)
                    continue
                if not restored:
                    await self._restore()
                    await self._apply_rollback_request(force=True)
                    restored = True
                await self._apply_rollback_request()
                await self._watch()
                if self._fetch is not None:
                    if self._fetch[1].done():
                        next_poll = time.monotonic() + await self._fetched()
                elif time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + await self.poll_once()
                await asyncio.sleep(TICK)
        finally:
            if self._fetch is not None:
                self._fetch[1].cancel()
                await asyncio.gather(self._fetch[1], return_exceptions=True)
                self._fetch = None
            self.an.score_watch = None
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    async def _restore(self) -> None:
        """At start: put the version recorded in state.json back in service."""
        state = self.store.read()
        self._stamp = self.store.stamp()
        if state.current is None:
            return
        try:
            scorer = await self._load(state.current)
        except (ModelError, OSError) as exc:
            await self.put([self._event("model_restore_failed", "warning",
                                        version=state.current, reason=str(exc))])
            await self._rollback(f"cannot load installed version: {exc}", by="automatic")
            return
        ev = self.an.swap_model(scorer, time.time(), {"registry_version": state.current,
                                                      "restored": True})
        self.running = state.current
        if state.probation == state.current:
            self._start_probation(scorer)
        await self.put([ev])

    def _start_probation(self, scorer: Scorer) -> None:
        self.probation = Probation(scorer.manifest, self.cfg.probation_windows,
                                   self.cfg.outlier_factor)
        self.an.score_watch = self.probation

    async def _watch(self) -> None:
        p = self.probation
        if p is None:
            return
        if p.failed:
            await self._rollback(p.failed, by="automatic")
        elif p.passed:
            self.probation = None
            self.an.score_watch = None
            with self.store.update() as st:
                st.probation = None
            self._stamp = self.store.stamp()
            await self.put([self._event("model_in_service", version=self.running,
                                        windows=p.seen)])

    # -- polling ------------------------------------------------------------------------------
    async def poll_once(self) -> float:
        """One look at the alias; when it names a new version, start fetching it (a task: the
        loop keeps watching the running model meanwhile). Returns the delay to the next look:
        ``poll_interval`` after a good answer, the backoff after a failure."""
        try:
            mv = await self.client().alias_version(self.cfg.model_name, self.cfg.alias)
        except RegistryFailure as exc:
            return self._failed(exc)
        self._answered()
        if mv.status not in ("READY", ""):
            log.debug("version not ready yet", extra={"source": self.source,
                                                      "version": mv.version})
        elif not self.store.read().known(mv.version):
            await self.put([self._event("model_version_found", version=mv.version,
                                        run_id=mv.run_id, source=mv.source)])
            self._fetch = (mv, asyncio.create_task(self._fetch_verified(mv),
                                                   name=f"registry-fetch:{self.source}"))
        return float(self.cfg.poll_interval)

    def _answered(self) -> None:
        if self.failing is not None:
            log.info("registry answers again", extra={"source": self.source,
                                                      "after": self.failing})
            self.failing = None
        self.retrier.reset()

    def _failed(self, exc: RegistryFailure) -> float:
        delay = self.retrier.next_delay()
        if exc.kind != self.failing:
            log.warning(FAILURE_MESSAGES.get(exc.kind, "registry failed; keeping the model"),
                        extra={"source": self.source, "kind": exc.kind, "error": str(exc),
                               "retry_in_s": round(delay, 2)})
            self.failing = exc.kind
        else:
            log.debug("registry still failing", extra={"source": self.source,
                                                       "kind": exc.kind})
        return delay

    async def _fetch_verified(self, mv: ModelVersion) -> Path:
        """Download into a fresh staging folder and run every check there."""
        staged = self.store.new_staging(mv.version)
        try:
            await self._download(mv, staged)
            names, contract = self._expected()
            await asyncio.to_thread(verify_staged, staged, self.keys, names, contract,
                                    threads=self.threads)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return staged

    async def _fetched(self) -> float:
        """A fetch finished: refuse the version, retry later, or install and swap it in."""
        assert self._fetch is not None
        mv, task = self._fetch
        self._fetch = None
        try:
            staged = task.result()
        except Refusal as exc:
            await self._refuse(mv.version, exc.step, exc.reason)
            return float(self.cfg.poll_interval)
        except RegistryFailure as exc:
            return self._failed(exc)
        final = self.store.install(staged, mv.version)
        try:
            scorer = await self._load(mv.version)
        except (ModelError, OSError) as exc:
            shutil.rmtree(final, ignore_errors=True)
            await self._refuse(mv.version, "load", f"installed copy does not load: {exc}")
            return float(self.cfg.poll_interval)
        await self._swap_in(mv, scorer, final)
        return float(self.cfg.poll_interval)

    async def _download(self, mv: ModelVersion, staged: Path,
                        on_chunk: Callable[[int], None] | None = None) -> None:
        c = self.client()
        path = artifact_path(await c.download_uri(mv.name, mv.version))
        files = {f.path.rsplit("/", 1)[-1]: f for f in await c.list_artifacts(path)
                 if not f.is_dir}
        missing = [n for n in (MANIFEST_FILE, MODEL_FILE) if n not in files]
        if missing:
            raise Refusal("files", f"version {mv.version} has no {', '.join(missing)} at {path}")
        wanted = [n for n in BUNDLE_FILES if n in files]
        budget = int(self.cfg.max_bundle_size)
        declared = sum(files[n].size or 0 for n in wanted)
        if declared > budget:
            raise Refusal("size", f"bundle is {declared} bytes, over max_bundle_size {budget}")
        for n in wanted:
            try:
                budget -= await c.download(f"{path}/{n}", staged / n, limit=budget,
                                           on_chunk=on_chunk)
            except TooLarge as exc:
                raise Refusal("size", f"bundle over max_bundle_size "
                              f"{int(self.cfg.max_bundle_size)}: {exc}") from exc

    async def _refuse(self, version: str, step: str, reason: str) -> None:
        with self.store.update() as st:
            st.refused[version] = f"{step}: {reason}"
        self._stamp = self.store.stamp()
        log.warning("model version refused", extra={"source": self.source, "version": version,
                                                     "step": step, "reason": reason})
        cur = self.an.slot.current if self.an.slot else None
        await self.put([self._event(
            "model_refused", "warning", version=version, step=step, reason=reason,
            kept=self.running, kept_model=f"{cur.ref.name} v{cur.ref.version}" if cur else None)])

    async def _swap_in(self, mv: ModelVersion, scorer: Scorer, final: Path) -> None:
        previous = self.running
        ev = self.an.swap_model(scorer, time.time(), {"registry_version": mv.version,
                                                      "path": str(final)})
        self.running = mv.version
        self._start_probation(scorer)
        with self.store.update() as st:
            st.current = mv.version
            st.history = [v for v in st.history if v != mv.version] + [mv.version]
            st.probation = mv.version
            pruned = self.store.prune(st, self.cfg.keep_versions)
        self._stamp = self.store.stamp()
        tagged = await self._tag(mv.version)
        log.info("model version deployed", extra={"source": self.source,
                                                  "version": mv.version, "previous": previous})
        await self.put([ev, self._event(
            "model_deployed", version=mv.version, previous=previous, tagged=tagged,
            model={"name": scorer.ref.name, "version": scorer.ref.version}, pruned=pruned,
            sha256=scorer.manifest.onnx_sha256)])

    async def _tag(self, version: str) -> bool:
        if not self.cfg.tag_deployed:
            return False
        key = f"edge.{self.gateway_id}.deployed"
        try:
            await self.client().set_version_tag(self.cfg.model_name, version, key,
                                                format_ts(time.time()))
        except RegistryFailure as exc:
            log.warning("could not tag the deployed version (the event still reports it)",
                        extra={"source": self.source, "kind": exc.kind, "error": str(exc)})
            return False
        return True

    # -- rollback -----------------------------------------------------------------------------
    async def _rollback(self, reason: str, *, by: str) -> None:
        with self.store.update() as st:
            old, new = st.rollback(reason)
        self._stamp = self.store.stamp()
        await self._activate(old, new, reason, by)

    async def _apply_rollback_request(self, *, force: bool = False) -> None:
        """``edge-agent models rollback`` changed state.json: put its choice in service (at
        start, ``force``: it may already be in service, only the event is still owed)."""
        if not force and self.store.stamp() == self._stamp:
            return
        with self.store.update() as st:
            req, st.rollback_request = st.rollback_request, None
            target = st.current
        self._stamp = self.store.stamp()
        if req is None:
            return
        old, reason = req.get("from"), str(req.get("reason", "by command"))
        if target == self.running:
            log.warning("model rolled back", extra={"source": self.source, "from": old,
                                                    "to": target, "by": "command"})
            await self.put([self._event("model_rolled_back", "warning", version=old,
                                        to=target, reason=reason, by="command")])
            return
        await self._activate(old, target, reason, "command")

    async def _activate(self, old: str | None, new: str | None, reason: str, by: str) -> None:
        self.probation = None
        self.an.score_watch = None
        ts = time.time()
        events: list[Any] = []
        if new is not None:
            try:
                scorer = await self._load(new)
                events.append(self.an.swap_model(scorer, ts, {"registry_version": new,
                                                              "rollback": True}))
            except (ModelError, OSError) as exc:
                log.error("rollback target does not load", extra={"source": self.source,
                                                                  "version": new})
                await self.put([self._event("model_restore_failed", "warning", version=new,
                                            reason=str(exc))])
                await self._rollback(f"cannot load installed version: {exc}", by=by)
                return
        elif self.configured_model is not None:
            events.append(self.an.load_model(self.configured_model, ts))
        elif self.an.slot is not None:
            self.an.slot.current = None  # nothing to fall back to: unscored beats wrong
        self.running = new
        log.warning("model rolled back", extra={"source": self.source, "from": old, "to": new,
                                                "reason": reason, "by": by})
        events.append(self._event("model_rolled_back", "warning", version=old, to=new,
                                  reason=reason, by=by))
        await self.put(events)
