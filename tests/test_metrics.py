"""metrics.jsonl and TensorBoard after a resume: each step once, with the resumed run's values."""

import json
import pathlib
import struct

from tensorboardX.proto import event_pb2

from train.metrics import MetricsWriter


def read_events(workdir: pathlib.Path) -> list[event_pb2.Event]:
  """Every event of every event file (TFRecord framing: length, its CRC, the Event proto, its CRC), by wall time."""
  events = []
  for path in workdir.glob('events.out.tfevents.*'):
    data, at = path.read_bytes(), 0
    while at < len(data):
      (length,) = struct.unpack('<Q', data[at:at + 8])
      events.append(event_pb2.Event.FromString(data[at + 12:at + 12 + length]))
      at += 12 + length + 4
  return sorted(events, key=lambda e: e.wall_time)


def tensorboard_scalars(workdir: pathlib.Path, tag: str) -> dict[int, list[float]]:
  """step -> values of `tag` as TensorBoard shows them: a SessionLog START at step s drops what was logged at steps
  >= s before it (TensorBoard's purge of orphaned data after a restart)."""
  shown: dict[int, list[float]] = {}
  for event in read_events(workdir):
    if event.session_log.status == event_pb2.SessionLog.START:
      shown = {step: v for step, v in shown.items() if step < event.step}
    for value in event.summary.value:
      if value.tag == tag:
        shown.setdefault(event.step, []).append(value.simple_value)
  return shown


def test_a_resumed_run_replaces_the_steps_past_its_checkpoint(tmp_path):
  """A run logs steps 0..10 and dies; its checkpoint is step 6; the resumed run logs 7..10 again, other values."""
  first = MetricsWriter(str(tmp_path), True, resume_step=0)
  for step in range(11):
    first.write(step, {'train/loss': float(step)})
  first.close()
  resumed = MetricsWriter(str(tmp_path), True, resume_step=6)
  for step in range(7, 11):
    resumed.write(step, {'train/loss': step + 0.5})
  resumed.close()
  want = {step: [float(step) if step <= 6 else step + 0.5] for step in range(11)}
  assert tensorboard_scalars(tmp_path, 'train/loss') == want
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert {r['step']: [r['train/loss']] for r in rows} == want and len(rows) == 11
