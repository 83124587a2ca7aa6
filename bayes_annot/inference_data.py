"""Point estimates (EM, MAP) as ArviZ ``InferenceData`` with 1 chain x 1 draw.

Summaries and plots then never branch on the engine (the pymc-marketing
convention). Variables: ``pi`` / ``m``, ``tau``, ``q``, ``strength[model]``,
``quality[user]``; the ``log_likelihood`` group holds each user's log-likelihood
(``y_user[user]``).
"""

from __future__ import annotations

import numpy as np


def point_estimate_idata(data, estimates):
    """Wrap an engine's point estimates in a 1 x 1 ``InferenceData``."""
    import arviz as az

    posterior = {}
    for name, value in estimates.parameters.items():
        if value is not None and name != "mean_quality":
            posterior[name] = np.array([[float(value)]])
    if estimates.strengths is not None:
        posterior["strength"] = np.asarray(estimates.strengths, dtype=float)[None, None, :]
    posterior["quality"] = np.asarray(estimates.quality, dtype=float)[None, None, :]
    coords = {"user": [str(u) for u in data.user_labels], "model": [str(m) for m in data.model_labels]}
    dims = {"strength": ["model"], "quality": ["user"], "y_user": ["user"]}
    kwargs = {}
    if estimates.user_loglik is not None:
        kwargs["log_likelihood"] = {"y_user": np.asarray(estimates.user_loglik, dtype=float)[None, None, :]}
    return az.from_dict(posterior=posterior, coords=coords, dims=dims, attrs={"engine": estimates.engine}, **kwargs)
