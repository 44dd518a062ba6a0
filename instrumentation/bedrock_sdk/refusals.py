"""A budget refusal of a Bedrock call is also a ``botocore.exceptions.ClientError``, what apps catch around boto3.

``ClientError`` takes ``(error_response, operation_name)``, not a message, so it cannot be the refusal's second base
as it is (``errors.refusal_class`` builds the refusal with its message): these subclasses take the message and fill
an error response whose ``Error.Code`` is ``BudgetExceededError``, a code no AWS service returns, so no handler mistakes
the refusal for throttling and retries it. One class per operation, so the message names the operation as botocore's
own errors do ("An error occurred (BudgetExceededError) when calling the Converse operation: ...").
"""

from __future__ import annotations

from botocore.exceptions import ClientError

__all__ = ["REFUSALS", "BedrockBudgetRefusal"]

ERROR_CODE = "BudgetExceededError"


class BedrockBudgetRefusal(ClientError):
    operation = "Converse"

    def __init__(self, message: str) -> None:
        super().__init__({"Error": {"Code": ERROR_CODE, "Message": message}, "ResponseMetadata": {}}, self.operation)


class ConverseRefusal(BedrockBudgetRefusal):
    operation = "Converse"


class ConverseStreamRefusal(BedrockBudgetRefusal):
    operation = "ConverseStream"


class InvokeModelRefusal(BedrockBudgetRefusal):
    operation = "InvokeModel"


class InvokeModelWithResponseStreamRefusal(BedrockBudgetRefusal):
    operation = "InvokeModelWithResponseStream"


REFUSALS = {
    cls.operation: cls
    for cls in (ConverseRefusal, ConverseStreamRefusal, InvokeModelRefusal, InvokeModelWithResponseStreamRefusal)
}
