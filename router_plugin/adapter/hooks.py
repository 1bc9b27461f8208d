"""Per-attempt work through PUBLIC hooks only, the same on 1.108 and 1.110 (verified: docs/adapter_probes/).

* :class:`GuardedStrategy` — the plugin's strategy behind LiteLLM's ``CustomRoutingStrategyBase``; the plugin's own
  errors leave with ``num_retries = 0`` (LiteLLM's retry loop honours an exception's ``num_retries`` on both
  lines, for any exception class), so nothing of the plugin's is retried without touching a private method.
* :class:`AttemptHooks` — one process-wide ``CustomLogger``:
  ``async_pre_call_deployment_hook`` runs once per attempt, after the pick: it refuses an attempt past the call's
  budget and gives the attempt its transport ``timeout`` (the value it sets is the one the HTTP call uses);
  ``async_post_call_failure_deployment_hook`` runs once per failed attempt, before LiteLLM asks the strategy again:
  it writes the plugin's failure record (``timeouts.FAILED_KEY``) into the request metadata, where the strategy's
  next pick reads it. This replaces ``timeouts.install_attempt_limits``' wrapper of the private ``_acompletion``
  except for one thing: an asyncio deadline that switches from the headers limit to the first-token limit (the
  transport's read timeout is the backstop instead).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.router import CustomRoutingStrategyBase

from .. import providers
from ..config import Timeouts
from ..errors import RouterPluginError
from ..providers.facts import Rejected
from ..redact import scrub, scrub_exception
from .strategy import METADATA_KEY
from .timeouts import FAILED_KEY, BudgetExceededError, _tried, remaining_s, request_metadata, transport_timeout

_NO_RETRY = (RouterPluginError, BudgetExceededError)


class _Rejections:
    """The provider errors that rejected a request (400/401/403/422 not about the model: providers' ``Rejected``),
    kept from the failure hook until the next pick re-raises them (bounded; keyed by a token in the failure record)."""

    def __init__(self, size: int = 512):
        self._errors: OrderedDict[str, BaseException] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def keep(self, error: BaseException) -> str:
        token = f"{id(error):x}{time.monotonic_ns():x}"
        with self._lock:
            self._errors[token] = error
            while len(self._errors) > self._size:
                self._errors.popitem(last=False)
        return token

    def get(self, token: Any) -> BaseException | None:
        with self._lock:
            return self._errors.get(token) if isinstance(token, str) else None


REJECTIONS = _Rejections()


def _rejected(request_kwargs: dict | None) -> BaseException | None:
    """The provider's rejection of this request, when the last failed attempt was one (core lines)."""
    if request_kwargs is None:
        return None
    failed = request_metadata(request_kwargs).get(FAILED_KEY) or ()
    last = failed[-1] if failed and isinstance(failed[-1], dict) else None
    return REJECTIONS.get(last.get("rejection")) if last else None


class GuardedStrategy(CustomRoutingStrategyBase):
    """Delegates every pick to ``inner`` (strategy.QuotaRouting, unchanged).

    On the core lines a ``BadRequestError`` is retried (``retry_settings``: a 402 or a context-length 400 belongs
    to the deployment, the next one may serve); when the provider rejected the REQUEST itself (malformed, content
    policy, 401/403: the next deployment would reject it too), the next pick re-raises that rejection at once,
    without an upstream call, with ``num_retries = 0``."""

    def __init__(self, inner: Any):
        self.inner = inner

    @staticmethod
    def _stop_after_rejection(request_kwargs: dict | None) -> None:
        error = _rejected(request_kwargs)
        if error is not None:
            error.num_retries = 0
            raise error

    @staticmethod
    def _budget(model: str, request_kwargs: dict | None) -> None:
        """Past the call's budget no attempt starts; the error names what was tried (the failure hook's record)."""
        if request_kwargs is None:
            return
        metadata = request_metadata(request_kwargs)
        left = remaining_s(metadata)
        if left is not None and left <= 0:
            error = BudgetExceededError(model, f"no complete answer within the call's time budget ({_tried(metadata)})")
            error.num_retries = 0
            raise error

    async def async_get_available_deployment(self, model, messages=None, input=None, specific_deployment=False,
                                             request_kwargs=None):
        self._stop_after_rejection(request_kwargs)
        self._budget(model, request_kwargs)
        try:
            return await self.inner.async_get_available_deployment(
                model, messages=messages, input=input, specific_deployment=specific_deployment,
                request_kwargs=request_kwargs)
        except _NO_RETRY as exc:
            exc.num_retries = 0  # the plugin's refusal / store failure / spent budget: retrying cannot help
            raise

    def get_available_deployment(self, model, messages=None, input=None, specific_deployment=False,
                                 request_kwargs=None):
        self._stop_after_rejection(request_kwargs)
        self._budget(model, request_kwargs)
        try:
            return self.inner.get_available_deployment(
                model, messages=messages, input=input, specific_deployment=specific_deployment,
                request_kwargs=request_kwargs)
        except _NO_RETRY as exc:
            exc.num_retries = 0
            raise


class AttemptHooks(CustomLogger):
    """One entry in LiteLLM's callbacks per process; routes each attempt to the owner's limits (by metadata)."""

    def __init__(self) -> None:
        super().__init__()
        self._limits: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def register(self, owner: str, holder: Any) -> None:
        """``holder.settings.timeouts`` gives the owner's limits while ``holder`` is alive."""
        import litellm

        with self._lock:
            self._limits[owner] = holder
            if self not in litellm.callbacks:
                litellm.callbacks.append(self)

    def _timeouts(self, metadata: dict) -> Timeouts | None:
        state = metadata.get(METADATA_KEY)
        owner = state.get("owner") if isinstance(state, dict) else None
        holder = self._limits.get(owner) if isinstance(owner, str) else None
        return holder.settings.timeouts if holder is not None else None

    async def async_pre_call_deployment_hook(self, kwargs: dict, call_type: Any):
        metadata = request_metadata(kwargs)
        limits = self._timeouts(metadata)
        if limits is None:
            return kwargs
        left = remaining_s(metadata)
        if left is not None and left <= 0:
            raise BudgetExceededError(str(kwargs.get("model")), "no complete answer within the call's budget")
        if kwargs.get("timeout") in (None, 6000, 6000.0):  # 6000: LiteLLM's default when the caller set none
            kwargs["timeout"] = transport_timeout(limits, bool(kwargs.get("stream")), left)
        return kwargs

    async def async_post_call_failure_deployment_hook(self, request_data: dict, original_exception: Exception,
                                                      call_type: Any, **_: Any):
        metadata = request_data.get("metadata") or request_data.get("litellm_metadata")
        if not isinstance(metadata, dict):
            return None
        state = metadata.get(METADATA_KEY)
        if not isinstance(state, dict) or not state.get("deployment_id"):
            return None
        if self._timeouts(metadata) is None:
            # Not a Router installed through the adapter (this entry stays in LiteLLM's process-wide list): the
            # installer's own attempt wrapper records its failures; a second record would read as two failures.
            return None
        status = getattr(original_exception, "status_code", None)
        text = " ".join(str(getattr(original_exception, "message", None) or original_exception).split())[:300]
        entry = {"deployment_id": str(state["deployment_id"]), "model": str(state.get("model")),
                 "attempt": int(state.get("attempts", 0)), "status": status if isinstance(status, int) else None,
                 "type": type(original_exception).__name__, "text": scrub(text)}
        provider = getattr(original_exception, "llm_provider", None)
        if isinstance(providers.classify_exception(provider if isinstance(provider, str) else "", original_exception,
                                                   time.time()), Rejected):
            scrub_exception(original_exception)  # the provider's reason reaches the caller, minus any key it echoed
            entry["rejection"] = REJECTIONS.keep(original_exception)
        metadata[FAILED_KEY] = [*(metadata.get(FAILED_KEY) or ()), entry]
        return None


ATTEMPT_HOOKS = AttemptHooks()

