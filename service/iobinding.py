"""Running the model with its input and output bound to preallocated device buffers.

`InferenceSession.run` with numpy arrays allocates a fresh device input and output on every call
and synchronises around each copy; a binding allocates them once per thread and reuses them.
It pays only when the output can stay on the device: measured on an H100 (docs/benchmarks.md,
GPU), a bound call that copies its output back to a numpy array took about as long as `run` for a
256-pixel tile and twice as long for a 512-pixel one, so the service's runtime uses it only when
asked (`UpscalerRuntime(io_binding=True)`). The code path runs on the CPU too, which is how the
tests cover it on machines without a GPU.

An `IOBinding` must not be shared between threads, so each thread gets its own buffers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class _Buffers:
    input: ort.OrtValue
    output: ort.OrtValue
    binding: ort.IOBinding


class BoundRunner:
    """Runs one fixed input shape through a session with per-thread bound buffers.

    Args:
        session: The loaded session.
        input_name: The model's input.
        output_name: The model's output.
        input_shape: The only input shape this runner accepts.
        output_shape: The output shape for that input.
        device: onnxruntime device of the buffers: `cuda` or `cpu`.
        device_id: Device index.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        input_name: str,
        output_name: str,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        device: str = "cuda",
        device_id: int = 0,
    ) -> None:
        self._session = session
        self._input_name = input_name
        self._output_name = output_name
        self._input_shape = tuple(input_shape)
        self._output_shape = tuple(output_shape)
        self._device = device
        self._device_id = device_id
        self._local = threading.local()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape `run` accepts."""
        return self._input_shape

    @property
    def device(self) -> str:
        """Where the bound buffers live."""
        return self._device

    def _buffers(self) -> _Buffers:
        buffers: _Buffers | None = getattr(self._local, "buffers", None)
        if buffers is None:
            allocate = ort.OrtValue.ortvalue_from_shape_and_type
            input_value = allocate(self._input_shape, np.float32, self._device, self._device_id)
            output_value = allocate(self._output_shape, np.float32, self._device, self._device_id)
            binding = self._session.io_binding()
            binding.bind_ortvalue_input(self._input_name, input_value)
            binding.bind_ortvalue_output(self._output_name, output_value)
            buffers = _Buffers(input_value, output_value, binding)
            self._local.buffers = buffers
        return buffers

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Runs a batch of exactly `input_shape`.

        Returns:
            A new host array of `output_shape` (never a view of the reused buffer).
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape != self._input_shape:
            raise ValueError(f"bound runner takes shape {self._input_shape}, got {batch.shape}")
        buffers = self._buffers()
        buffers.input.update_inplace(batch)
        buffers.binding.synchronize_inputs()
        self._session.run_with_iobinding(buffers.binding)
        buffers.binding.synchronize_outputs()
        # For a GPU buffer numpy() is already a fresh host copy; a CPU buffer would hand out a
        # view that the next call overwrites.
        output = buffers.output.numpy()
        return output.copy() if self._device == "cpu" else output
