"""π-MEGA PVs beyond ADCore, in the catalog's terms. Names follow LNLS's ADPimega driver
where it has the concept (CounterDepth, Backend_BufferUsed_RBV, ProcessedAcquisitionCounter_RBV,
IOCStatusMessage_RBV); the rest follow its style."""

from __future__ import annotations

from .catalog import PVSpec, ai, ao, bi, bo, longin, longout, mbbo, stringin, stringout, text

#: ADPimega's CounterDepth states, in its order, and the bit depth each one means.
COUNTER_DEPTHS = ("1 bit", "12 bits", "6 bits", "24 bits")
DEPTH_OF_STATE: dict[str, int] = dict(zip(COUNTER_DEPTHS, (1, 12, 6, 24), strict=True))

#: What starts each exposure (ADCore's two, and Gated as area detectors with a gate input).
TRIGGER_MODES = ("Internal", "External", "Gated")

PIMEGA_CAM: tuple[PVSpec, ...] = (
    mbbo("CounterDepth", COUNTER_DEPTHS, "12 bits", doc="Medipix counter depth"),
    mbbo("TriggerMode", TRIGGER_MODES,
         doc="Internal: every AcquirePeriod; External: one AcquireTime exposure a trigger; "
             "Gated: while the gate input is high"),
    bo("TriggerSoftware", ("Done", "Trigger"), readback=False,
       doc="One trigger pulse (External mode, where the detector's input can be pulsed)"),
    ai("MaxFrameRate_RBV", precision=0, units="Hz",
       doc="Read-out limit of the counter depth: 2000 Hz up to 12 bit, 1000 Hz at 24 bit"),
    ai("FrameRate_RBV", precision=1, units="Hz", doc="Measured processed frames/s"),
    ai("Throughput_RBV", precision=3, units="Gbit/s", doc="Measured receive throughput"),
    longin("CorruptFrames_RBV", doc="Frames refused as corrupt (all modules)"),
    longin("DroppedFrames_RBV", doc="Frames lost in any stage"),
    ai("Backend_BufferUsed_RBV", precision=1, units="%", doc="Frame rings in use"),
    longin("ProcessedAcquisitionCounter_RBV", doc="Acquisitions processed since start-up"),
    stringin("Backend_RBV", "CPU", doc="Where the pipeline runs: CPU or GPU"),
    text("IOCStatusMessage_RBV", 256, doc="Last message of the back-end"),
)

PIMEGA_IMAGE: tuple[PVSpec, ...] = (
    longout("PreviewBinning", 0,
            doc="Preview binning factor; 0 bins just enough to fit one module (1536x1536)"),
)

#: HDF1: what the NeXus file says beyond the frames: its definition and, for NXmx, the
#: diffraction geometry (names as ADEiger's where it has them: DetDist, BeamX, BeamY).
PIMEGA_HDF5: tuple[PVSpec, ...] = (
    mbbo("NexusDefinition", ("NXtomo", "NXmx"),
         doc="NeXus application definition of the next file: NXtomo or NXmx"),
    stringout("SampleName", "sample", doc="NXsample name"),
    ao("DetDist", 100.0, precision=2, units="mm", doc="Sample to detector distance (NXmx)"),
    ao("BeamX", 0.0, precision=1, units="pixel", doc="Beam centre, column (NXmx)"),
    ao("BeamY", 0.0, precision=1, units="pixel", doc="Beam centre, row (NXmx)"),
    ao("Wavelength", 1.0, precision=4, units="Angstrom", doc="Incident wavelength (NXmx)"),
    stringout("SensorMaterial", "Si", doc="Sensor material (NXmx)"),
    ao("SensorThickness", 300.0, precision=1, units="um", doc="Sensor thickness (NXmx)"),
    stringout("SourceName", "unknown", doc="NXsource name (NXmx)"),
)

#: Proc1: the bad-pixel mask, loaded from a file.
PIMEGA_PROCESS: tuple[PVSpec, ...] = (
    text("BadPixelFile", 256, writable=True, readback=True,
         doc="NumPy .npy file of a bool mask (True: bad), the image's shape; empty: none"),
    bo("EnableBadPixels", ("Disable", "Enable"), doc="Zero the pixels of the mask"),
    bi("ValidBadPixels_RBV", ("Invalid", "Valid"),
       doc="Whether a mask of the image's shape is loaded"),
)
