"""The one error type for bad input: it names the key, the value and the fix, on one line."""


class ConfigError(ValueError):
  """Raised before anything compiles; main.py prints it as one line and exits 2."""

  def __init__(self, key: str, value: object, fix: str):
    self.key, self.value, self.fix = key, value, fix
    super().__init__(f'{key}={value!r}: {fix}')
