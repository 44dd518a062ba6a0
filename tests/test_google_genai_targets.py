"""The google-genai methods spendwatch wraps exist: two are the SDK's private one-request methods, and a release that
renames them must fail here, loudly, rather than leave generate_content uncounted."""

from __future__ import annotations

import inspect

import pytest
from google.genai import models

from spendwatch.instrumentation.google_genai_sdk.targets import TARGETS


@pytest.mark.parametrize(("class_name", "method"), [(target[0], target[1]) for target in TARGETS])
def test_every_wrapped_method_exists_and_takes_model_contents_and_config(class_name, method):
    parameters = inspect.signature(getattr(getattr(models, class_name), method)).parameters

    assert {"model", "contents", "config"} <= set(parameters)
