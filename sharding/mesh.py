"""The device mesh: four named axes (data, fsdp, tensor, sequence) sized from `config.mesh`.

Axis order puts `data` outermost and `sequence`/`tensor` innermost, so with the devices listed host by host the
axes that communicate most (tensor, sequence) stay within a host.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from configs.errors import ConfigError
from configs.sections import MESH_AXES as AXES
from configs.sections import MeshConfig


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> dict[str, int]:
  """Resolve the one allowed -1 to the devices left over, and check the product is the device count."""
  sizes = {a: getattr(mesh_cfg, a) for a in AXES}
  free = [a for a, n in sizes.items() if n == -1]
  fixed = int(np.prod([n for n in sizes.values() if n != -1]))
  if free:
    if num_devices % fixed:
      biggest = max((a for a in AXES if a != free[0]), key=lambda a: sizes[a])
      raise ConfigError(f'mesh.{biggest}', sizes[biggest], f'with mesh.{free[0]}=-1 the other axes multiply to {fixed}, '
                        f'which does not divide the {num_devices} devices')
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    biggest = max(AXES, key=lambda a: sizes[a])
    raise ConfigError(f'mesh.{biggest}', sizes[biggest],
                      f'the mesh has {fixed} devices but {num_devices} are available; make the axes multiply to '
                      f'{num_devices} (e.g. set one axis to -1)')
  return sizes


def build_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh; with `mesh.dcn_data` > 1 the data axis is split into that many granules (TPU slices, or processes
  elsewhere) joined over the slower data-center network, and every other axis stays inside a granule."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_cfg, len(devices))
  shape = tuple(sizes[a] for a in AXES)
  axis_types = (AxisType.Auto,) * len(AXES)
  dcn = mesh_cfg.dcn_data
  if dcn <= 1:
    return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)
  if sizes['data'] % dcn:
    raise ConfigError('mesh.dcn_data', dcn, f'must divide the data axis ({sizes["data"]})')
  slices = {getattr(d, 'slice_index', None) for d in devices}
  by_process = slices == {None} or len(slices) == 1
  granules = jax.process_count() if by_process else len(slices)
  if granules != dcn:
    raise ConfigError('mesh.dcn_data', dcn, f'there are {granules} {"processes" if by_process else "slices"}; '
                      'set it to that number, or 1 for a plain mesh')
  ici = (sizes['data'] // dcn,) + shape[1:]
  device_grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1, 1), devices, process_is_granule=by_process)
  return Mesh(device_grid, AXES, axis_types=axis_types)
