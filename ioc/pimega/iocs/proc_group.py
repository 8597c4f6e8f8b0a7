"""``Proc1:``: NDPluginProcess, the corrections a user drives (background, flat field,
offset and scale, clipping, the recursive filter, the output data type) plus a bad-pixel
mask loaded from a file.

SaveBackground / SaveFlatField keep the next raw frame (they read Yes until it arrived,
then No; ValidBackground_RBV / ValidFlatField_RBV say whether one of the image's shape is
there). The steps run on every frame of the next acquisition — changes while one runs take
effect at the next — before the statistics, the preview and the file, which records which
steps ran and their reference frames (``/entry/process``). DataTypeOut "Automatic" keeps the
counter depth's type; Float32 is the way to float frames. What ADCore does that this node
cannot is refused with the reason: reading TIFF sequences, AutoOffsetScale, and
FilterCallbacks "Array N only" (every frame goes on to the file).
"""

from __future__ import annotations

import os
import stat
from typing import Any

import numpy as np

from pimega.core.errors import ConfigError
from pimega.core.naming import check_within
from pimega.runtime import FilterCoefficients, ProcessSteps, Status, filter_coefficients

from .catalog import FILTER_TYPES, PROCESS_STACK
from .factory import make_group, on_put
from .pimega_specs import PIMEGA_PROCESS
from .plugins import PluginGroup

ProcessBase = make_group("ProcessBase", *PROCESS_STACK, PIMEGA_PROCESS)

#: The reference each Save PV keeps, and the readback saying whether it is there.
_REFERENCES = {"SaveBackground": ("background", "ValidBackground_RBV"),
               "SaveFlatField": ("flat", "ValidFlatField_RBV")}
#: The recursive filter's coefficient PVs, as FilterType's sequences write them.
_COEFFICIENTS = ("OC1", "OC2", "OC3", "OC4", "FC1", "FC2", "FC3", "FC4", "RC1", "RC2")
_SCALARS = ("OOffset", "OScale", "FOffset", "FScale", "ROffset")
#: The settings that make up the steps (besides FilterType and BadPixelFile).
_SETTINGS = ("EnableCallbacks", "DataTypeOut", "EnableBackground", "EnableFlatField",
             "ScaleFlatField", "EnableOffsetScale", "Offset", "Scale", "EnableLowClip",
             "LowClipThresh", "LowClipValue", "EnableHighClip", "HighClipThresh",
             "HighClipValue", "EnableFilter", "AutoResetFilter", "NumFilter",
             "EnableBadPixels", *_COEFFICIENTS, *_SCALARS)


class ProcessGroup(PluginGroup, ProcessBase):
    """NDPluginProcess on the node's frames (see the module docstring)."""

    port_name = "PROC1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mask: np.ndarray | None = None
        self._references: dict[str, np.ndarray] = {}

    async def refused(self, name: str, reason: str) -> None:
        """NDPluginProcess has no message PV: the detector's StatusMessage_RBV says why."""
        where = self.prefix.removeprefix(self.root.prefix)
        await self.root.cam.post("StatusMessage_RBV", f"{where}{name} refused: {reason}")

    @on_put("ReadBackgroundTIFFSeq", "ReadFlatFieldTIFFSeq")
    async def _read_tiff(self, name: str, value: int) -> int:
        raise ConfigError(f"{name}: no TIFF reader here; save the reference from frames "
                          "(SaveBackground, SaveFlatField)")

    @on_put("AutoOffsetScale")
    async def _auto_offset_scale(self, name: str, value: str) -> str:
        if value != "Done":
            raise ConfigError("AutoOffsetScale is not available: set Offset and Scale")
        return value

    @on_put("FilterCallbacks")
    async def _filter_callbacks(self, name: str, value: str) -> str:
        if value != "Every array":
            raise ConfigError("FilterCallbacks 'Array N only' is not available: every frame "
                              "goes on to the file and the other plugins")
        return value

    @on_put(*_REFERENCES)
    async def _save(self, name: str, value: str) -> str:
        if value == "Yes":
            self.node.save_reference(_REFERENCES[name][0])
        return value

    @on_put("ResetFilter")
    async def _reset_filter(self, name: str, value: str) -> str:
        if value == "Yes":
            self.node.reset_filter()
        return "No"  # a button: the reset happens at the next frame

    @on_put("FilterType")
    async def _filter_type(self, name: str, value: str) -> str:
        await self._write_coefficients(value)
        return value

    @on_put("FilterTypeSeq", *(f"{kind}Seq" for kind in FILTER_TYPES))
    async def _filter_sequence(self, name: str, value: int) -> int:
        kind = name.removesuffix("Seq")
        await self._write_coefficients(self.pv("FilterType").value if kind == "FilterType"
                                       else kind)
        return value

    async def _write_coefficients(self, filter_type: str) -> None:
        """Write the coefficients of ``filter_type``, as ADCore's FilterType sequences do."""
        c = filter_coefficients(filter_type, self.pv("NumFilter").value)
        for pv, coefficient in zip(_COEFFICIENTS, (*c.oc, *c.fc, *c.rc), strict=True):
            await self.post(pv, coefficient)
        await self.apply(self.steps())

    @on_put("HighClip", "LowClip")
    async def _legacy_clip(self, name: str, value: float) -> float:
        """ADCore < 3's names of the clip thresholds."""
        threshold = f"{name}Thresh"
        await self.apply(self.steps(threshold, value))
        await self.post(threshold, value)
        return value

    @on_put("BadPixelFile")
    async def _bad_pixel_file(self, name: str, value: str) -> str:
        mask = self._load_mask(value) if value else None
        previous, self._mask = self._mask, mask
        try:
            await self.apply(self.steps())
        except ConfigError:
            self._mask = previous
            raise
        await self.post("ValidBadPixels_RBV", "Valid" if mask is not None else "Invalid")
        return value

    def _load_mask(self, path: str) -> np.ndarray:
        """A bool mask of the image's shape from a NumPy ``.npy`` file in a data directory
        (the file itself, links followed: a link there to a file elsewhere is refused)."""
        roots = self.root.data_roots
        try:
            check_within(os.path.abspath(path), roots)
        except ConfigError:
            raise ConfigError(f"{path!r} is outside the data directories ({', '.join(roots)})"
                              ) from None
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read a mask from {path}: {exc}") from None
        if not regular:  # a FIFO, a device: opening one could block the IOC
            raise ConfigError(f"{path} is not a file")
        try:
            mask = np.load(path, mmap_mode="r", allow_pickle=False)  # the header first
        except (OSError, ValueError, EOFError) as exc:
            raise ConfigError(f"cannot read a mask from {path}: {exc}") from None
        if not isinstance(mask, np.ndarray):  # an .npz archive
            mask.close()
            raise ConfigError(f"{path} holds several arrays, not one mask (.npy)")
        if mask.shape != tuple(self.node.image_shape):
            raise ConfigError(f"the mask in {path} is {mask.shape}, the image "
                              f"{tuple(self.node.image_shape)}")
        try:
            return np.array(mask, dtype=bool)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the mask in {path} is not of numbers: {exc}") from None

    @on_put(*_SETTINGS)
    async def _setting(self, name: str, value: Any) -> Any:
        """Checked now (enabling a reference that is not there is refused), in force at
        once when idle."""
        if name == "NumFilter" and value < 1:  # the filter would run with 1, not this
            raise ConfigError(f"NumFilter must be ≥ 1, got {value}")
        await self.apply(self.steps(name, value))
        return value

    def steps(self, name: str = "", value: Any = None) -> ProcessSteps | None:
        """Proc1's steps from its PVs as they are (``name`` taking ``value``); None when
        none is on."""
        def get(pv: str) -> Any:
            return value if pv == name else self.pv(pv).value

        def on(pv: str) -> bool:
            return get(pv) in ("Enable", "Yes")

        background = self._reference("background") if on("EnableBackground") else None
        flat = self._reference("flat") if on("EnableFlatField") else None
        out_type = get("DataTypeOut")
        steps = ProcessSteps(
            background=background, flat=flat, scale_flat=float(get("ScaleFlatField")),
            offset_scale=((float(get("Offset")), float(get("Scale")))
                          if on("EnableOffsetScale") else None),
            high_clip=((float(get("HighClipThresh")), float(get("HighClipValue")))
                       if on("EnableHighClip") else None),
            low_clip=((float(get("LowClipThresh")), float(get("LowClipValue")))
                      if on("EnableLowClip") else None),
            filter=self._coefficients(get) if on("EnableFilter") else None,
            num_filter=int(get("NumFilter")), auto_reset_filter=on("AutoResetFilter"),
            bad_pixel_mask=self._loaded_mask() if on("EnableBadPixels") else None,
            output=None if out_type == "Automatic" else np.dtype(out_type.lower()),
        )
        enabled = (steps.background, steps.flat, steps.offset_scale, steps.high_clip,
                   steps.low_clip, steps.filter, steps.bad_pixel_mask, steps.output)
        if get("EnableCallbacks") != "Enable" or all(v is None for v in enabled):
            return None
        return steps

    def _loaded_mask(self) -> np.ndarray:
        if self._mask is None:
            raise ConfigError("no bad-pixel mask loaded: set BadPixelFile first")
        return self._mask

    def _reference(self, kind: str) -> np.ndarray:
        reference = self._references.get(kind)
        if reference is None or reference.shape != tuple(self.node.image_shape):
            raise ConfigError(f"no valid {kind} yet: save one first (Save"
                              f"{'Background' if kind == 'background' else 'FlatField'} 1)")
        return reference

    @staticmethod
    def _coefficients(get: Any) -> FilterCoefficients:
        c = {pv: float(get(pv)) for pv in (*_COEFFICIENTS, *_SCALARS)}
        return FilterCoefficients(
            oc=(c["OC1"], c["OC2"], c["OC3"], c["OC4"]),
            fc=(c["FC1"], c["FC2"], c["FC3"], c["FC4"]), rc=(c["RC1"], c["RC2"]),
            o_offset=c["OOffset"], o_scale=c["OScale"], f_offset=c["FOffset"],
            f_scale=c["FScale"], r_offset=c["ROffset"])

    async def apply(self, steps: ProcessSteps | None) -> None:
        """Hand ``steps`` to the node when it is idle (else the next Acquire takes them)
        and show the output data type everywhere."""
        if self.node.acquiring:
            return
        self.node.configure(process=steps)
        await self.root.publish_geometry()

    async def publish_process(self, status: Status) -> None:
        """Readbacks of the references and the filter, and the plugin's counters."""
        saved = self.node.references()
        for save_pv, (kind, valid_pv) in _REFERENCES.items():
            reference = saved.get(kind)
            if reference is not None and reference is not self._references.get(kind):
                self._references[kind] = reference
                await self.post(save_pv, "No")
                if not self.node.acquiring:  # an enabled reference changed
                    self.node.configure(process=self.steps())
            valid = reference is not None and reference.shape == tuple(self.node.image_shape)
            await self.post_many({valid_pv: "Valid" if valid else "Invalid"})
        await self.post_many({"NumFiltered_RBV": status.num_filtered})
        await self.publish_arrays(status.unique_id, 0, status.unique_id)
