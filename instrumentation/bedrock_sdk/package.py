# Converse and ConverseStream arrived in botocore 1.34.116 (May 2024); InvokeModel is older.
_instruments = ("botocore >= 1.34.116",)

_supports_metrics = True
