"""The areaDetector (ADCore) PVs the IOC serves, as data: one `PVSpec` per EPICS record.

Groups follow ADCore's templates (ADApp/Db, 2026-07): `ND_ARRAY_BASE`, `AD_BASE`,
`ND_PLUGIN_BASE`, `ND_FILE`, `ND_FILE_HDF5`, `ND_STD_ARRAYS`, `ND_STATS`, `ND_ROI`. Names,
record types, enum strings (in order), precisions and defaults are ADCore's; a setpoint
with ``readback=True`` is also served as ``NAME_RBV`` (the matching input record). Stack
them as ADCore's ``include`` lines do (`CAM_STACK`, `HDF5_STACK`, ...): a later template
redefines a record of an earlier one (FileFormat, PluginType_RBV), as in ADCore. Adapt a
spec to the detector with `dataclasses.replace` (e.g. TriggerMode with ADPimega's
"Alignment", the length of image1:ArrayData).

Served differently from ADCore, on purpose:

- ``Acquire`` is a ``busy`` record (put-callback completes when acquisition ends, as
  ophyd-async expects). ADCore serves a ``bo`` plus an internal ``AcquireBusy`` busy record.
- ``asyn`` records (``AsynIO``) are served as a LONG stand-in: there is no asyn port to trace.
- ``bo`` records without ZNAM/ONAM (ReadStatus, ProcessPlugin, ...) get the strings
  "0"/"1", so that they stay 2-state enums.
- Legacy names ophyd v1 still declares, no longer in ADCore, are served as plain stand-ins:
  ``PoolMaxBuffers``, ``FileNumber_Sync``, ``FileNumber_write`` and the Stats time-series
  controls ``TSControl``, ``TSRead``, ``TSNumPoints``, ``TSCurrentPoint``, ``TSAcquiring``.
- ``Stats1:Reset`` (an ``sseq`` in ADCore, its screen's reset button) is served as a LONG
  whose put zeroes the statistics; ``Proc1:<Type>Seq`` (``seq`` records) as LONGs whose put
  writes that filter type's coefficients, as ADCore's sequences do.
- Legacy names ophyd's ProcessPlugin still declares: ``HighClip``, ``LowClip`` (the clip
  thresholds of ADCore < 3).
- Not served: the numbered families beyond 3-D (ArraySize3..9, Dim3SA..Dim9SA,
  ChunkSize3..9, ExtraDimSize/Name/Chunk3..9, PosNameDim3..9, PosIndexDim3..9), the
  internal link records (calcout/seq/sseq chains such as AcquireBusy, MaxArrayRate_COUT,
  SortFreeLow, Stats Reset1/2, Proc's FilterTypeSeq and NumFilterRecip), NDPluginBase's
  internal calcouts except the three ophyd declares (QueueFreeLow, QueueUseHIGH,
  QueueUseHIHI).

Fields of a record (``DataType_RBV.DISA`` read by ophyd's ``dtype_numpy``, ``.RTYP``...)
come from caproto's record support, which every PV here uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import records  # noqa: F401 - caproto serves the sseq records named here

#: Record types whose VAL a client may write.
OUTPUT_RECORDS = frozenset(
    {"ao", "longout", "bo", "busy", "mbbo", "stringout", "calcout", "fanout", "dfanout", "asyn",
     "sseq", "seq"}
)
#: The input record that serves ``NAME_RBV`` for a setpoint of each output record type.
READBACK_RECORD = {
    "ao": "ai",
    "longout": "longin",
    "bo": "bi",
    "busy": "bi",
    "mbbo": "mbbi",
    "stringout": "stringin",
    "waveform": "waveform",
}
#: Channel Access type of each scalar record type (waveform/subArray carry their FTVL).
CA_TYPE = {
    "ao": "DOUBLE",
    "ai": "DOUBLE",
    "calc": "DOUBLE",
    "calcout": "DOUBLE",
    "dfanout": "DOUBLE",
    "longout": "LONG",
    "longin": "LONG",
    "fanout": "LONG",
    "asyn": "LONG",
    "sseq": "LONG",
    "seq": "LONG",
    "bo": "ENUM",
    "bi": "ENUM",
    "busy": "ENUM",
    "mbbo": "ENUM",
    "mbbi": "ENUM",
    "stringout": "STRING",
    "stringin": "STRING",
}
ARRAY_RECORDS = frozenset({"waveform", "subArray"})
ARRAY_TYPES = frozenset({"CHAR", "SHORT", "LONG", "FLOAT", "DOUBLE"})
MAX_ENUM_STATES = 16
MAX_ENUM_STRING = 25


@dataclass(frozen=True)
class PVSpec:
    """One EPICS record (and, with ``readback``, its ``_RBV`` twin).

    ``value`` is the default (an enum string for enum records); ``dtype`` is the waveform's
    FTVL, with ``max_length`` its NELM; a CHAR waveform is a long string (FilePath...).
    """

    name: str
    record: str
    value: Any = 0
    enum_strings: tuple[str, ...] | None = None
    readback: bool = False
    readback_enum_strings: tuple[str, ...] | None = None
    max_length: int | None = None
    dtype: str | None = None
    precision: int = 0
    units: str = ""
    writable: bool = False
    doc: str = ""

    def __post_init__(self) -> None:
        if self.record in ARRAY_RECORDS:
            if self.dtype not in ARRAY_TYPES or not self.max_length:
                raise ValueError(f"{self.name}: a {self.record} needs dtype and max_length")
        elif self.record not in CA_TYPE:
            raise ValueError(f"{self.name}: unknown record type {self.record!r}")
        if self.readback and self.record not in READBACK_RECORD:
            raise ValueError(f"{self.name}: a {self.record} has no _RBV readback record")
        if self.ca_type == "ENUM":
            _check_enum(self.name, self.enum_strings, self.value)
            if self.readback_enum_strings is not None:
                _check_enum(self.name, self.readback_enum_strings, None)
                if len(self.readback_enum_strings) != len(self.enum_strings or ()):
                    raise ValueError(f"{self.name}: readback strings differ in number")

    @property
    def ca_type(self) -> str:
        """CA native type: ENUM, DOUBLE, LONG, STRING, or the FTVL of an array."""
        if self.record in ARRAY_RECORDS and self.dtype is not None:
            return self.dtype
        return CA_TYPE[self.record]

    @property
    def is_text(self) -> bool:
        """A CHAR waveform holding a string (ADCore's long strings, up to NELM bytes)."""
        return self.record == "waveform" and self.dtype == "CHAR"

    @property
    def readback_name(self) -> str:
        return f"{self.name}_RBV"

    def readback_spec(self) -> PVSpec:
        """The ``NAME_RBV`` input record that echoes this setpoint."""
        return PVSpec(
            name=self.readback_name,
            record=READBACK_RECORD[self.record],
            value=self._readback_value(),
            enum_strings=self.readback_enum_strings or self.enum_strings,
            max_length=self.max_length,
            dtype=self.dtype,
            precision=self.precision,
            units=self.units,
            doc=f"Readback of {self.name}",
        )

    def _readback_value(self) -> Any:
        if self.readback_enum_strings is None or self.enum_strings is None:
            return self.value
        return self.readback_enum_strings[self.enum_strings.index(self.value)]


def _check_enum(name: str, strings: tuple[str, ...] | None, value: Any) -> None:
    if not strings or len(strings) > MAX_ENUM_STATES:
        raise ValueError(f"{name}: an enum needs 1..{MAX_ENUM_STATES} strings")
    if any(len(s) > MAX_ENUM_STRING for s in strings):
        raise ValueError(f"{name}: enum strings are limited to {MAX_ENUM_STRING} characters")
    if value is not None and value not in strings:
        raise ValueError(f"{name}: default {value!r} is not one of {strings}")


# --- Constructors, one per record kind (ADCore's VAL default first, then options) -------


def ao(name: str, value: float = 0.0, *, precision: int = 0, units: str = "",
       readback: bool = True, doc: str = "") -> PVSpec:
    return PVSpec(name, "ao", float(value), readback=readback, precision=precision,
                  units=units, writable=True, doc=doc)


def ai(name: str, *, precision: int = 0, units: str = "", doc: str = "") -> PVSpec:
    return PVSpec(name, "ai", 0.0, precision=precision, units=units, doc=doc)


def longout(name: str, value: int = 0, *, units: str = "", readback: bool = True,
            doc: str = "") -> PVSpec:
    return PVSpec(name, "longout", value, readback=readback, units=units, writable=True,
                  doc=doc)


def longin(name: str, value: int = 0, *, units: str = "", doc: str = "") -> PVSpec:
    return PVSpec(name, "longin", value, units=units, doc=doc)


def enum_out(record: str, name: str, strings: tuple[str, ...], value: str | None = None, *,
             readback: bool = True, readback_strings: tuple[str, ...] | None = None,
             doc: str = "") -> PVSpec:
    """A bo, mbbo or busy setpoint; ``value`` defaults to the first string (VAL 0)."""
    return PVSpec(name, record, strings[0] if value is None else value, strings,
                  readback=readback, readback_enum_strings=readback_strings, writable=True,
                  doc=doc)


def enum_in(record: str, name: str, strings: tuple[str, ...], value: str | None = None, *,
            doc: str = "") -> PVSpec:
    """A bi or mbbi; ``value`` defaults to the first string."""
    return PVSpec(name, record, strings[0] if value is None else value, strings, doc=doc)


def stringout(name: str, value: str = "", *, doc: str = "") -> PVSpec:
    return PVSpec(name, "stringout", value, readback=True, writable=True, doc=doc)


def stringin(name: str, value: str = "", *, doc: str = "") -> PVSpec:
    return PVSpec(name, "stringin", value, doc=doc)


def text(name: str, length: int, *, writable: bool = False, readback: bool = False,
         doc: str = "") -> PVSpec:
    """A CHAR waveform used as a long string (NELM ``length``)."""
    return PVSpec(name, "waveform", "", readback=readback, max_length=length, dtype="CHAR",
                  writable=writable, doc=doc)


def array(name: str, dtype: str, length: int, *, writable: bool = False, readback: bool = False,
          doc: str = "") -> PVSpec:
    """A numeric waveform of FTVL ``dtype`` and NELM ``length`` (empty at start)."""
    return PVSpec(name, "waveform", (), readback=readback, max_length=length, dtype=dtype,
                  writable=writable, doc=doc)


def link(record: str, name: str, *, precision: int = 0, units: str = "", doc: str = "") -> PVSpec:
    """A database-logic record (calc, calcout, fanout, dfanout, asyn) served as its VAL."""
    value = 0.0 if CA_TYPE[record] == "DOUBLE" else 0
    return PVSpec(name, record, value, precision=precision, units=units,
                  writable=record in OUTPUT_RECORDS, doc=doc)


def subarray(name: str, *, doc: str = "") -> PVSpec:
    """One element of a Dimensions waveform (a LONG subArray, NELM 1)."""
    return PVSpec(name, "subArray", 0, max_length=1, dtype="LONG", doc=doc)


def bo(name: str, strings: tuple[str, ...], value: str | None = None, **kw: Any) -> PVSpec:
    return enum_out("bo", name, strings, value, **kw)


def mbbo(name: str, strings: tuple[str, ...], value: str | None = None, **kw: Any) -> PVSpec:
    return enum_out("mbbo", name, strings, value, **kw)


def busy(name: str, strings: tuple[str, ...], **kw: Any) -> PVSpec:
    return enum_out("busy", name, strings, **kw)


def bi(name: str, strings: tuple[str, ...], value: str | None = None, **kw: Any) -> PVSpec:
    return enum_in("bi", name, strings, value, **kw)


def mbbi(name: str, strings: tuple[str, ...], value: str | None = None, **kw: Any) -> PVSpec:
    return enum_in("mbbi", name, strings, value, **kw)


# --- Enum strings (exactly ADCore's, in order) ------------------------------------------

NO_YES = ("No", "Yes")
DISABLE_ENABLE = ("Disable", "Enable")
OFF_ON = ("Off", "On")
NAMELESS = ("0", "1")  # a bo without ZNAM/ONAM
DATA_TYPES = ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
              "Float32", "Float64")
COLOR_MODES = ("Mono", "Bayer", "RGB1", "RGB2", "RGB3", "YUV444", "YUV422", "YUV421")
DETECTOR_STATES = ("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error",
                   "Waiting", "Initializing", "Disconnected", "Aborted")
IMAGE_MODES = ("Single", "Multiple", "Continuous")
TRIGGER_MODES = ("Internal", "External")
FRAME_TYPES = ("Normal", "Background", "FlatField", "DblCorrelation")
FILE_WRITE_MODES = ("Single", "Capture", "Stream")
COMPRESSIONS = ("None", "N-bit", "szip", "zlib", "Blosc", "BSLZ4", "LZ4", "JPEG")
CLOSED_OPEN = ("Closed", "Open")

#: PluginType_RBV of each plugin kind, as ADCore's plugins report it.
PLUGIN_TYPES = {
    "hdf5": "NDFileHDF5",
    "stats": "NDPluginStats",
    "image": "NDPluginStdArrays",
    "roi": "NDPluginROI",
    "process": "NDPluginProcess",
    "pva": "NDPluginPva",
    "time_series": "NDPluginTimeSeries",
}

#: NELM of image1:ArrayData: one module's frame (1536 x 1536); replace for other layouts.
ARRAY_DATA_LENGTH = 1536 * 1536
#: NELM of the Stats profiles (XSIZE/YSIZE): the widest array, 2 x 2 modules.
PROFILE_LENGTH = 3072
HIST_SIZE = 256  # NELM of Histogram_RBV (commonPlugins' HIST_SIZE)
TS_POINTS = 2048  # NELM of the Stats time series (commonPlugins' NCHANS)


# --- NDArrayBase.template: every driver and plugin --------------------------------------

ND_ARRAY_BASE: tuple[PVSpec, ...] = (
    stringin("ADCoreVersion_RBV", "Unknown", doc="ADCore version the server follows"),
    stringin("DriverVersion_RBV", "Unknown", doc="Version of this driver or plugin"),
    stringin("PortName_RBV", "Unknown", doc="asyn port name of this driver or plugin"),
    stringin("Manufacturer_RBV", "Unknown"),
    stringin("Model_RBV", "Unknown"),
    stringin("SerialNumber_RBV", "Unknown"),
    stringin("SDKVersion_RBV", "Unknown"),
    stringin("FirmwareVersion_RBV", "Unknown"),
    busy("Acquire", ("Done", "Acquire"), readback_strings=("Done", "Acquiring"),
         doc="Start/stop; a put-callback completes when acquisition ends"),
    bo("WaitForPlugins", NO_YES, readback=False,
       doc="Acquire completes only after the plugins processed every array"),
    longout("NDimensions", doc="Number of dimensions of the last array"),
    array("Dimensions", "LONG", 10, writable=True, readback=True),
    subarray("Dim0SA"),
    subarray("Dim1SA"),
    subarray("Dim2SA"),
    longin("ArraySize0", doc="Size of dimension 0 (from Dimensions)"),
    longin("ArraySize1"),
    longin("ArraySize2"),
    subarray("Dim0SA_RBV"),
    subarray("Dim1SA_RBV"),
    subarray("Dim2SA_RBV"),
    longin("ArraySize0_RBV", doc="Size of dimension 0 of the last array (width)"),
    longin("ArraySize1_RBV", doc="Size of dimension 1 of the last array (height)"),
    longin("ArraySize2_RBV"),
    mbbi("BayerPattern_RBV", ("RGGB", "GBRG", "GRBG", "BGGR")),
    longin("ArraySizeX_RBV", doc="Width of the arrays this port outputs"),
    longin("ArraySizeY_RBV", doc="Height of the arrays this port outputs"),
    longin("ArraySizeZ_RBV"),
    longin("ArraySize_RBV", doc="Bytes per array"),
    stringin("Codec_RBV"),
    longin("CompressedSize_RBV"),
    mbbo("DataType", DATA_TYPES, doc="NDArray data type (doubles as a numpy dtype name)"),
    mbbo("ColorMode", COLOR_MODES),
    longin("UniqueId_RBV"),
    ai("TimeStamp_RBV", precision=3),
    longin("EpicsTSSec_RBV"),
    longin("EpicsTSNsec_RBV"),
    longout("ArrayCounter", doc="Arrays produced/processed; write 0 to reset"),
    link("calc", "ArrayRate_RBV", precision=2, units="Hz"),
    bo("ArrayCallbacks", DISABLE_ENABLE, "Enable"),
    text("NDAttributesMacros", 256, writable=True),
    text("NDAttributesFile", 256, writable=True, doc="XML file (or XML text) of NDAttributes"),
    mbbi("NDAttributesStatus", ("Attributes file OK", "File not found", "XML syntax error",
                                "Macro substitution error")),
    ai("PoolMaxMem", precision=1, units="MB"),
    bo("PoolPollStats", NAMELESS, readback=False),
    ai("PoolUsedMem", precision=1, units="MB"),
    longin("PoolAllocBuffers"),
    longin("PoolFreeBuffers"),
    link("calc", "PoolUsedBuffers"),
    longin("PoolMaxBuffers", doc="Legacy (ADCore < 2.2) stand-in"),
    bo("EmptyFreeList", NAMELESS, readback=False),
    busy("PreAllocBuffers", ("Done", "Allocate"), readback=False),
    longout("NumPreAllocBuffers", 100),
    longin("NumQueuedArrays"),
)

# --- ADBase.template: the detector driver (cam1:) ---------------------------------------

AD_BASE: tuple[PVSpec, ...] = (
    longin("MaxSizeX_RBV", doc="Detector width in pixels"),
    longin("MaxSizeY_RBV", doc="Detector height in pixels"),
    longout("BinX", 1),
    longout("BinY", 1),
    longout("MinX"),
    longout("MinY"),
    longout("SizeX", 1),
    longout("SizeY", 1),
    bo("ReverseX", NO_YES),
    bo("ReverseY", NO_YES),
    ao("AcquireTime", 1.0, precision=3, doc="Exposure time per frame, s"),
    ao("AcquirePeriod", 0.0, precision=3, doc="Time between frames, s"),
    ai("TimeRemaining_RBV", precision=3),
    ao("Gain", 1.0, precision=3),
    mbbo("FrameType", FRAME_TYPES),
    mbbo("ImageMode", IMAGE_MODES, "Continuous"),
    mbbo("TriggerMode", TRIGGER_MODES),
    longout("NumExposures", 1),
    longin("NumExposuresCounter_RBV"),
    longout("NumImages", 1),
    longin("NumImagesCounter_RBV", doc="Images acquired in this acquisition"),
    mbbi("DetectorState_RBV", DETECTOR_STATES),
    text("StatusMessage_RBV", 256),
    text("StringToServer_RBV", 256),
    text("StringFromServer_RBV", 256),
    bo("ReadStatus", NAMELESS, "1", readback=False, doc="Write to re-read the detector status"),
    mbbo("ShutterMode", ("None", "EPICS PV", "Detector output"),
         readback_strings=("None", "EPICS PV", "Camera output")),
    bo("ShutterControl", ("Close", "Open")),
    bi("ShutterStatus_RBV", CLOSED_OPEN),
    ao("ShutterOpenDelay", precision=3),
    ao("ShutterCloseDelay", precision=3),
    bi("ShutterControlEPICS", CLOSED_OPEN),
    link("fanout", "ShutterFanout"),
    link("calcout", "ShutterOpenEPICS"),
    link("calcout", "ShutterCloseEPICS"),
    mbbi("ShutterStatusEPICS_RBV", CLOSED_OPEN),
    ao("Temperature", 25.0, precision=1, units="C"),
    ai("TemperatureActual", precision=1, units="C"),
    link("asyn", "AsynIO", doc="Stand-in for ADCore's asyn record"),
)

# --- NDPluginBase.template: every plugin ------------------------------------------------

ND_PLUGIN_BASE: tuple[PVSpec, ...] = (
    stringin("PluginType_RBV", "Unknown"),
    stringout("NDArrayPort", doc="Port name of the upstream driver or plugin"),
    longout("NDArrayAddress"),
    bo("EnableCallbacks", DISABLE_ENABLE),
    ao("MinCallbackTime", precision=3, units="s"),
    ao("MaxArrayRate", precision=3, units="Hz", readback=False),
    link("calc", "MaxArrayRate_RBV", precision=3, units="Hz"),
    ao("MaxByteRate", precision=3, units="s"),
    ai("ExecutionTime_RBV", precision=3, units="ms"),
    bo("ProcessPlugin", NAMELESS, "1", readback=False),
    bo("BlockingCallbacks", NO_YES),
    longout("DroppedArrays"),
    longout("QueueSize"),
    link("calcout", "QueueFreeLow"),
    link("calcout", "QueueUseHIGH"),
    link("calcout", "QueueUseHIHI"),
    longin("QueueFree"),
    link("calc", "QueueUse"),
    longout("NumThreads", 1),
    longin("MaxThreads_RBV"),
    mbbo("SortMode", ("Unsorted", "Sorted")),
    ao("SortTime", 0.1, precision=3),
    longout("SortSize", 20),
    longin("SortFree"),
    longout("DroppedOutputArrays"),
    longout("DisorderedArrays"),
    link("asyn", "AsynIO", doc="Stand-in for ADCore's asyn record"),
)

# --- NDFile.template: file-writing plugins ----------------------------------------------

ND_FILE: tuple[PVSpec, ...] = (
    text("FilePath", 256, writable=True, readback=True, doc="Directory, with a trailing /"),
    bi("FilePathExists_RBV", NO_YES),
    longout("CreateDirectory", doc="Directory levels the plugin may create (<0: from the end)"),
    text("FileName", 256, writable=True, readback=True),
    longout("FileNumber", 1),
    longout("FileNumber_Sync", readback=False, doc="Legacy (ADCore < 2.2) stand-in"),
    longout("FileNumber_write", readback=False, doc="Legacy (ADCore < 2.2) stand-in"),
    bo("AutoIncrement", NO_YES, "Yes"),
    text("FileTemplate", 256, writable=True, readback=True, doc="printf(path, name, number)"),
    text("FullFileName_RBV", 512, doc="The file being (or last) written"),
    bo("AutoSave", NO_YES),
    busy("WriteFile", ("Done", "Write"), readback_strings=("Done", "Writing")),
    busy("ReadFile", ("Done", "Read"), readback_strings=("Done", "Reading")),
    mbbo("FileFormat", ("Undefined", "Invalid"), readback_strings=("netCDF", "Undefined")),
    mbbo("FileWriteMode", FILE_WRITE_MODES),
    busy("Capture", ("Done", "Capture"), readback_strings=("Done", "Capturing"),
         doc="Start/stop capture; a put-callback completes when the file is closed"),
    longout("NumCapture", 1, doc="Frames to capture; 0 captures until stopped"),
    longin("NumCaptured_RBV"),
    bo("FreeCapture", ("Done", "Free"), readback=False),
    bo("DeleteDriverFile", NO_YES),
    bi("WriteStatus", ("Write OK", "Write error")),
    text("WriteMessage", 256),
    bo("LazyOpen", NO_YES, doc="Open the file at the first frame instead of at Capture"),
    stringout("TempSuffix"),
)

# --- NDFileHDF5.template (after NDFile and NDPluginBase) --------------------------------

ND_FILE_HDF5: tuple[PVSpec, ...] = (
    stringin("PluginType_RBV", PLUGIN_TYPES["hdf5"]),
    busy("FlushNow", ("Done", "Flush"), readback=False,
         doc="Flush the file; a put-callback completes when flushed"),
    mbbo("FileFormat", ("HDF5", "Invalid"), readback_strings=("HDF5", "Undefined")),
    bo("ChunkSizeAuto", NO_YES, "Yes"),
    longout("NumRowChunks"),
    longout("NumColChunks"),
    longout("NumFramesChunks"),
    longout("ChunkSize2"),
    longout("NDAttributeChunk"),
    longout("BoundaryAlign", 0, units="bytes"),
    longout("BoundaryThreshold", 1, units="bytes"),
    longout("NumExtraDims"),
    longout("ExtraDimSizeN"),
    stringin("ExtraDimNameN_RBV"),
    longout("ExtraDimSizeX"),
    stringin("ExtraDimNameX_RBV"),
    longout("ExtraDimSizeY"),
    stringin("ExtraDimNameY_RBV"),
    bo("StoreAttr", NO_YES),
    bo("StorePerform", NO_YES),
    ai("RunTime", precision=3, units="s"),
    ai("IOSpeed", precision=1, units="Mbit/s"),
    longout("NumFramesFlush"),
    mbbo("Compression", COMPRESSIONS),
    longout("NumDataBits", units="bit"),
    longout("DataBitsOffset", units="bit"),
    longout("SZipNumPixels", units="bit"),
    longout("ZLevel"),
    mbbo("BloscShuffle", ("None", "Byte", "Bit")),
    mbbo("BloscCompressor", ("BloscLZ", "LZ4", "LZ4HC", "SNAPPY", "ZLIB", "ZSTD")),
    longout("BloscLevel"),
    longout("JPEGQuality", 90),
    bo("DimAttDatasets", NO_YES),
    text("XMLErrorMsg_RBV", 256),
    bi("XMLValid_RBV", NO_YES),
    text("XMLFileName", 2048, writable=True, readback=True, doc="Layout XML file (or text)"),
    bi("SWMRSupported_RBV", ("Not Supported", "Supported")),
    bo("SWMRMode", OFF_ON),
    bi("SWMRActive_RBV", ("Off", "Active")),
    longin("SWMRCbCounter_RBV"),
    bo("PositionMode", OFF_ON),
    stringout("PosNameDimN"),
    stringout("PosNameDimX"),
    stringout("PosNameDimY"),
    stringout("PosIndexDimN"),
    stringout("PosIndexDimX"),
    stringout("PosIndexDimY"),
    ao("FillValue", precision=1),
    longout("ExtraDimChunkX"),
    longout("ExtraDimChunkY"),
)

# --- NDStdArrays.template (image1:) -----------------------------------------------------

ND_STD_ARRAYS: tuple[PVSpec, ...] = (
    stringin("PluginType_RBV", PLUGIN_TYPES["image"]),
    array("ArrayData", "SHORT", ARRAY_DATA_LENGTH,
          doc="The latest (preview) image, row-major; SHORT (LONG if started at 24 bit)"),
)

# --- NDStats.template (Stats1:) ---------------------------------------------------------

_STATS_RESULTS = (  # ADCore pairs an ao (reset target) with the ai the plugin updates
    ("MinValue", 0), ("MaxValue", 0), ("MeanValue", 0), ("Total", 0), ("Net", 0),
    ("MinX", 0), ("MinY", 0), ("MaxX", 0), ("MaxY", 0), ("CentroidTotal", 0),
    ("CentroidX", 1), ("CentroidY", 1), ("SigmaX", 1), ("SigmaY", 1), ("SigmaXY", 3),
    ("SkewX", 3), ("SkewY", 3), ("KurtosisX", 3), ("KurtosisY", 3), ("Eccentricity", 3),
    ("Orientation", 3), ("HistEntropy", 3),
)
_TIME_SERIES = (
    "MinValue", "MinX", "MinY", "MaxValue", "MaxX", "MaxY", "MeanValue", "Sigma", "Total",
    "Net", "CentroidTotal", "CentroidX", "CentroidY", "SigmaX", "SigmaY", "SigmaXY", "SkewX",
    "SkewY", "KurtosisX", "KurtosisY", "Eccentricity", "Orientation", "Timestamp",
)
_PROFILES = ("Average", "Threshold", "Centroid", "Cursor")

ND_STATS: tuple[PVSpec, ...] = (
    stringin("PluginType_RBV", PLUGIN_TYPES["stats"]),
    bo("ComputeStatistics", NO_YES, "Yes"),
    longout("BgdWidth", 1),
    ao("SigmaValue", readback=False),
    ai("Sigma_RBV", precision=1),
    *(ao(name, readback=False) for name, _ in _STATS_RESULTS),
    *(ai(f"{name}_RBV", precision=prec) for name, prec in _STATS_RESULTS),
    bo("ComputeCentroid", NO_YES),
    ao("CentroidThreshold", 1.0),
    *(array(f"TS{name}", "DOUBLE", TS_POINTS) for name in _TIME_SERIES),
    mbbo("TSControl", ("Erase/Start", "Start", "Stop", "Read"), readback=False,
         doc="Legacy (ADCore < 2.6) stand-in"),
    longout("TSRead", 3, readback=False, doc="Legacy (ADCore < 2.6) stand-in"),
    longout("TSNumPoints", TS_POINTS, readback=False, doc="Legacy (ADCore < 2.6) stand-in"),
    longin("TSCurrentPoint", doc="Legacy (ADCore < 2.6) stand-in"),
    bi("TSAcquiring", ("Done", "Acquiring"), doc="Legacy (ADCore < 2.6) stand-in"),
    bo("ComputeProfiles", NO_YES),
    longin("ProfileSizeX_RBV"),
    longin("ProfileSizeY_RBV"),
    longout("CursorX", 256),
    longout("CursorY", 256),
    ai("CursorVal", precision=1),
    *(array(f"Profile{kind}{axis}_RBV", "DOUBLE", PROFILE_LENGTH)
      for kind in _PROFILES for axis in "XY"),
    bo("ComputeHistogram", NO_YES),
    longout("HistSize", HIST_SIZE),
    ao("HistMin", 0.0),
    ao("HistMax", 255.0),
    longout("HistBelow"),
    longout("HistAbove"),
    array("Histogram_RBV", "DOUBLE", HIST_SIZE),
    array("HistogramX_RBV", "DOUBLE", HIST_SIZE),
    longin("MaxSizeX"),
    link("dfanout", "SetXHOPR"),
    longin("MaxSizeY"),
    link("dfanout", "SetYHOPR"),
    link("sseq", "Reset", doc="Write to zero the statistics"),
)

# --- NDTimeSeries.template (Stats1:TS:, the time series of the statistics) --------------

ND_TIME_SERIES: tuple[PVSpec, ...] = (
    stringin("PluginType_RBV", PLUGIN_TYPES["time_series"]),
    busy("TSAcquire", ("Done", "Acquire"), readback=False,
         doc="Start (1) or stop (0) collecting the statistics' time series"),
    bi("TSAcquiring", ("Done", "Acquiring")),
    bo("TSRead", ("Done", "Read"), "Read", readback=False,
       doc="Write to publish the time series now"),
    longout("TSNumPoints", TS_POINTS, readback=False, doc="Points to collect"),
    longin("TSCurrentPoint", doc="Points collected"),
    ao("TSTimePerPoint", precision=3, units="s"),
    ao("TSAveragingTime", 0.1, precision=3, units="s"),
    longin("TSNumAverage"),
    ai("TSElapsedTime", precision=3, units="s"),
    mbbo("TSAcquireMode", ("Fixed length", "Circ. buffer")),
    array("TSTimeAxis", "DOUBLE", TS_POINTS),
)

# --- NDProcess.template (Proc1:) --------------------------------------------------------

FILTER_TYPES = ("RecursiveAve", "Average", "Sum", "Difference", "RecursiveAveDiff",
                "CopyToFilter")
_FILTER_COEFFICIENTS = (("OOffset", 0.0), ("OScale", 1.0), ("OC1", 1.0), ("OC2", -1.0),
                        ("OC3", 0.0), ("OC4", 1.0), ("FOffset", 0.0), ("FScale", 1.0),
                        ("FC1", 1.0), ("FC2", -1.0), ("FC3", 0.0), ("FC4", 1.0),
                        ("ROffset", 0.0), ("RC1", 1.0), ("RC2", 1.0))

ND_PROCESS: tuple[PVSpec, ...] = (
    stringin("PluginType_RBV", PLUGIN_TYPES["process"]),
    mbbo("DataTypeOut", (*DATA_TYPES, "Automatic"), "Automatic"),
    bo("SaveBackground", NO_YES, doc="Write 1 to keep the next frame as the background"),
    bo("EnableBackground", DISABLE_ENABLE),
    bi("ValidBackground_RBV", ("Invalid", "Valid")),
    link("sseq", "ReadBackgroundTIFFSeq", doc="Refused: no TIFF reader here"),
    stringout("PortBackup"),
    bo("SaveFlatField", NO_YES, doc="Write 1 to keep the next frame as the flat field"),
    bo("EnableFlatField", DISABLE_ENABLE),
    bi("ValidFlatField_RBV", ("Invalid", "Valid")),
    ao("ScaleFlatField", 255.0),
    link("sseq", "ReadFlatFieldTIFFSeq", doc="Refused: no TIFF reader here"),
    bo("EnableOffsetScale", DISABLE_ENABLE),
    busy("AutoOffsetScale", ("Done", "Calculating"), readback=False),
    ao("Offset", 0.0, precision=2),
    ao("Scale", 1.0, precision=2),
    bo("EnableLowClip", DISABLE_ENABLE),
    ao("LowClipThresh", 0.0),
    ao("LowClipValue", 0.0),
    bo("EnableHighClip", DISABLE_ENABLE),
    ao("HighClipThresh", 100.0),
    ao("HighClipValue", 100.0),
    bo("EnableFilter", DISABLE_ENABLE),
    bo("ResetFilter", NO_YES),
    bo("AutoResetFilter", NO_YES),
    bo("FilterCallbacks", ("Every array", "Array N only")),
    longout("NumFilter", 1),
    link("calc", "NumFilterRecip"),
    longin("NumFiltered_RBV"),
    *(ao(name, value, precision=2) for name, value in _FILTER_COEFFICIENTS),
    mbbo("FilterType", FILTER_TYPES, readback=False),
    link("seq", "FilterTypeSeq", doc="Write to apply FilterType's coefficients"),
    *(link("seq", f"{name}Seq", doc=f"Write to set the {name} coefficients")
      for name in FILTER_TYPES),
    ao("HighClip", 100.0, doc="Legacy (ADCore < 3) name of HighClipThresh"),
    ao("LowClip", 0.0, doc="Legacy (ADCore < 3) name of LowClipThresh"),
)

# --- NDPva.template (Pva1:) -------------------------------------------------------------

ND_PVA: tuple[PVSpec, ...] = (
    stringin("PluginType_RBV", PLUGIN_TYPES["pva"]),
    text("PvName_RBV", 256, doc="The PV Access channel of the NTNDArray"),
)

# --- NDROI.template (ROI1:) -------------------------------------------------------------

ND_ROI: tuple[PVSpec, ...] = (
    stringin("PluginType_RBV", PLUGIN_TYPES["roi"]),
    stringout("Name"),
    *(longout(f"Bin{axis}", 1) for axis in "XYZ"),
    *(longout(f"Min{axis}") for axis in "XYZ"),
    *(longout(f"Size{axis}", 1000000) for axis in "XYZ"),
    *(bo(f"AutoSize{axis}", NO_YES) for axis in "XYZ"),
    *(longin(f"MaxSize{axis}_RBV") for axis in "XYZ"),
    *(bo(f"Reverse{axis}", NO_YES) for axis in "XYZ"),
    *(bo(f"Enable{axis}", DISABLE_ENABLE, "Enable") for axis in "XYZ"),
    bo("EnableScale", DISABLE_ENABLE),
    ao("Scale", 1.0),
    mbbo("DataTypeOut", (*DATA_TYPES, "Automatic"), "Automatic"),
    longin("MaxX"),
    link("dfanout", "SetXHOPR"),
    longin("MaxY"),
    link("dfanout", "SetYHOPR"),
    bo("CollapseDims", DISABLE_ENABLE),
)

# --- Template stacks, as ADCore's databases include them --------------------------------

CAM_STACK = (ND_ARRAY_BASE, AD_BASE)
IMAGE_STACK = (ND_ARRAY_BASE, ND_PLUGIN_BASE, ND_STD_ARRAYS)
HDF5_STACK = (ND_ARRAY_BASE, ND_PLUGIN_BASE, ND_FILE, ND_FILE_HDF5)
STATS_STACK = (ND_ARRAY_BASE, ND_PLUGIN_BASE, ND_STATS)
ROI_STACK = (ND_ARRAY_BASE, ND_PLUGIN_BASE, ND_ROI)
TIME_SERIES_STACK = (ND_ARRAY_BASE, ND_PLUGIN_BASE, ND_TIME_SERIES)
PROCESS_STACK = (ND_ARRAY_BASE, ND_PLUGIN_BASE, ND_PROCESS)
PVA_STACK = (ND_ARRAY_BASE, ND_PLUGIN_BASE, ND_PVA)
