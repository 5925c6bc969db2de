"""The errors main.py reports as one line: bad input (exit 2) and a run that diverged (exit 1)."""


class ConfigError(ValueError):
  """Bad input, raised before anything compiles; it names the key, the value and the fix."""

  def __init__(self, key: str, value: object, fix: str):
    self.key, self.value, self.fix = key, value, fix
    super().__init__(f'{key}={value!r}: {fix}')


class TrainingDiverged(RuntimeError):
  """A non-finite loss or gradient: training stops before saving it, so the last checkpoint stays good."""
