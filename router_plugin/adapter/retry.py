"""What the Router does after a failed attempt, now that the plugin owns waiting and cooldowns.

LiteLLM's defaults fight a quota-aware chain: a 404 "No endpoints found" or a 402 ends the request although
the next deployment could serve it, and a 429 on a one-deployment group sleeps out the Retry-After (up to
60 s) before trying anything else. The policy here:

* never sleep between attempts: the failure callback has already recorded the real reset for every worker,
  and the strategy's next walk skips what cannot serve (``max_wait_s`` is the one place the plugin waits);
* move on to the next deployment after failures that belong to the deployment (model gone, credits, busy,
  server errors, context too small, request too large for its TPM), while other deployments remain;
* never retry a refusal by the plugin itself, a failure of its store, or a request the provider rejected as malformed (400/401/403
  that are not about the model, content policy included: the provider's reason reaches the caller as is): the next
  deployment would reject it too;
* never retry once the call's time budget is spent (``BudgetExceededError``) or every deployment has failed for
  this request (``ChainFailedError``);
* allow enough retries to walk the longest chain with one same-deployment retry each: which deployment an attempt
  may use is the strategy's decision (strategy.py: HTTP 500 once -> one retry on the same deployment; 429 -> the
  next deployment, or a short Retry-After waited out when nothing else can serve; 400 context length -> a
  deployment with a larger window; anything else -> the next deployment), so the attempts stay bounded by
  2 x the chain whatever the errors.
"""

from __future__ import annotations

import time
import types
from typing import Any

from .. import providers
from ..errors import RouterPluginError
from ..providers.facts import Rejected
from ..redact import scrub, scrub_exception
from .strategy import ChainFailedError, QuotaExhaustedError, RequestRejectedError
from .timeouts import BudgetExceededError

_MARK = "_router_plugin_retry_policy"


def install_retry_policy(router: Any, chain_length: int) -> None:
    if getattr(router, _MARK, False):
        return
    original_should_retry = router.should_retry_this_error

    def should_retry_this_error(self, error: Exception, healthy_deployments=None, all_deployments=None,
                                context_window_fallbacks=None, content_policy_fallbacks=None, regular_fallbacks=None):
        if isinstance(error, (QuotaExhaustedError, ChainFailedError, BudgetExceededError, RouterPluginError,
                              RequestRejectedError)):
            raise error  # the plugin's own refusal, a bad request, a spent budget or a store/config failure
        fact = providers.classify_exception(_provider_of(error), error, time.time())
        if isinstance(fact, Rejected):
            scrub_exception(error)  # the provider's reason reaches the caller, minus any key it echoed
            raise error
        if len(all_deployments or []) > 1:
            return True
        return original_should_retry(
            error=error, healthy_deployments=healthy_deployments, all_deployments=all_deployments,
            context_window_fallbacks=context_window_fallbacks, content_policy_fallbacks=content_policy_fallbacks,
            regular_fallbacks=regular_fallbacks,
        )

    def time_to_sleep_before_retry(self, e, remaining_retries, num_retries, healthy_deployments=None,
                                   all_deployments=None):
        return 0

    router.should_retry_this_error = types.MethodType(should_retry_this_error, router)
    router._time_to_sleep_before_retry = types.MethodType(time_to_sleep_before_retry, router)
    router.num_retries = max(router.num_retries or 0, 2 * chain_length)
    setattr(router, _MARK, True)



def _provider_of(error: Exception) -> str:
    provider = getattr(error, "llm_provider", None)
    return provider if isinstance(provider, str) else ""
