"""Keep identifying DICOM values out of everything embedkit writes.

Three pieces:

- ``IDENTIFYING_KEYWORDS``: the DICOM attributes (by keyword) that identify a person, a visit, an institution or a
  device: a subset of the PS3.15 Annex E *Basic Application Level Confidentiality Profile*. embedkit follows the
  profile's *Retain Patient Characteristics Option*: sex and age are kept as research metadata (age in whole
  years), everything in this list is dropped or, for patient and study ids, replaced by a salted hash.
- ``salted_hash(value, salt)``: HMAC-SHA256 of the value keyed by a secret salt, truncated to 16 hex digits
  (64 bits: collision-free in practice at the scale of any CXR archive). Without the salt the hash cannot be
  reversed by hashing guessed ids.
- ``scrub(record)``: a guard applied to dicts (rows, metadata, provenance) right before they are written.

Where the salt comes from (``get_salt``), first match wins:

1. the environment variable ``EMBEDKIT_SALT`` (the salt itself);
2. the environment variable ``EMBEDKIT_SALT_FILE`` (a path to a file holding it);
3. the per-project file ``.embedkit/salt`` in the project directory (the current directory unless given),
   created with 32 random bytes (hex) and mode 0600 on first use.

Keep the salt with the project and out of shared outputs: the same salt gives the same hashed ids, which is what
lets a manifest be rebuilt and an extraction resume; a different salt gives unrelated ids.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from embedkit.errors import DataError

logger = logging.getLogger(__name__)

SALT_ENV = "EMBEDKIT_SALT"
SALT_FILE_ENV = "EMBEDKIT_SALT_FILE"
SALT_FILE = Path(".embedkit") / "salt"

#: DICOM keywords that identify a person, a visit, a place or a device (PS3.15 Annex E basic profile subset).
IDENTIFYING_KEYWORDS: frozenset[str] = frozenset(
    {
        # the patient
        "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
        "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate", "PatientBirthTime",
        "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation", "MilitaryRank",
        "BranchOfService", "MedicalRecordLocator", "Occupation", "PatientComments", "AdditionalPatientHistory",
        "PatientInsurancePlanCodeSequence", "InsurancePlanIdentification", "RegionOfResidence",
        "CountryOfResidence", "PatientReligiousPreference", "ResponsiblePerson", "ResponsibleOrganization",
        "EthnicGroup", "AdmissionID", "AdmittingDiagnosesDescription", "MedicalAlerts", "Allergies",
        # the visit: dates, times, ids
        "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime", "AcquisitionTime",
        "ContentTime", "AcquisitionDateTime", "InstanceCreationDate", "InstanceCreationTime", "OverlayDate",
        "OverlayTime", "CurveDate", "CurveTime", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
        "PerformedProcedureStepID", "PerformedProcedureStepDescription", "ScheduledProcedureStepID",
        "RequestedProcedureID", "RequestAttributesSequence", "AccessionNumber", "StudyID", "StudyDescription",
        "SeriesDescription", "ImageComments", "RequestedProcedureDescription", "ReasonForStudy",
        "ReasonForTheRequestedProcedure", "IssuerOfAccessionNumberSequence", "FillerOrderNumberImagingServiceRequest",
        "PlacerOrderNumberImagingServiceRequest",
        # people and places
        "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
        "RequestingPhysician", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
        "OperatorsName", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
        # devices
        "DeviceSerialNumber", "DetectorID", "PlateID", "CassetteID", "GantryID", "DeviceUID",
        # unique identifiers (link back to the archive)
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "MediaStorageSOPInstanceUID",
        "FrameOfReferenceUID", "ReferencedSOPInstanceUID", "IrradiationEventUID", "SynchronizationFrameOfReferenceUID",
        "StorageMediaFileSetUID", "ConcatenationUID", "DimensionOrganizationUID", "TargetUID",
    }
)


def identifying_tags() -> frozenset[int]:
    """The numeric DICOM tags of ``IDENTIFYING_KEYWORDS`` (imports pydicom).

    Returns
    -------
    frozenset of int
        Tags as ``0xGGGGEEEE`` integers; keywords unknown to the installed dictionary are skipped.
    """
    from pydicom.datadict import tag_for_keyword

    tags = (tag_for_keyword(k) for k in IDENTIFYING_KEYWORDS)
    return frozenset(int(t) for t in tags if t is not None)


def salted_hash(value: Any, salt: str) -> str:
    """Pseudonymise one identifier: HMAC-SHA256 keyed by ``salt``, first 16 hex digits.

    Parameters
    ----------
    value : Any
        The identifier (converted with ``str`` and stripped). ``None`` or an empty string stays ``""``
        so that a missing id remains visibly missing.
    salt : str
        The secret salt (see ``get_salt``); must be non-empty.

    Returns
    -------
    str
        16 lowercase hex digits, or ``""`` for a missing value.

    Raises
    ------
    DataError
        If ``salt`` is empty.

    Examples
    --------
    >>> salted_hash("12345", "pepper") == salted_hash(" 12345 ", "pepper")
    True
    """
    if not salt:
        raise DataError("The salt for hashing identifiers is empty. Set EMBEDKIT_SALT or use a salt file.")
    text = "" if value is None else str(value).strip()
    if not text:
        return ""
    return hmac.new(salt.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def get_salt(project_dir: str | os.PathLike[str] | None = None, *, create: bool = True) -> str:
    """The project's salt: ``$EMBEDKIT_SALT``, else ``$EMBEDKIT_SALT_FILE``, else ``<project>/.embedkit/salt``.

    Parameters
    ----------
    project_dir : path-like, optional
        Where the per-project salt file lives (default: the current directory).
    create : bool
        Create the per-project salt file (random, mode 0600) when no salt is configured.

    Returns
    -------
    str
        The salt.

    Raises
    ------
    DataError
        If ``$EMBEDKIT_SALT_FILE`` names an unreadable or empty file, or no salt exists and ``create`` is False.
    """
    env = os.environ.get(SALT_ENV, "").strip()
    if env:
        return env
    file_env = os.environ.get(SALT_FILE_ENV, "").strip()
    if file_env:
        return _read_salt_file(Path(file_env))
    path = Path(project_dir or Path.cwd()) / SALT_FILE
    if path.is_file():
        return _read_salt_file(path)
    if not create:
        raise DataError(f"No salt configured and {path} does not exist. Set {SALT_ENV} or create the file.")
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(salt + "\n")
    logger.info("Created a new per-project salt at %s; keep it to get the same hashed ids next time.", path)
    return salt


def _read_salt_file(path: Path) -> str:
    try:
        salt = path.read_text().strip()
    except OSError as exc:
        raise DataError(f"Cannot read the salt file {path}: {exc.strerror}. Check {SALT_FILE_ENV}.") from None
    if not salt:
        raise DataError(f"The salt file {path} is empty. Put a long random string in it.")
    return salt


def _is_identifying_key(key: Any) -> bool:
    if isinstance(key, str):
        return key in IDENTIFYING_KEYWORDS
    return False


def scrub(record: Mapping[str, Any], *, strict: bool = False) -> dict[str, Any]:
    """Drop identifying DICOM attributes from a record before it is written anywhere.

    Keys are compared with the DICOM keywords in ``IDENTIFYING_KEYWORDS`` exactly (``PatientID`` is dropped,
    the manifest column ``patient_id`` holding a salted hash is kept). Nested mappings and lists are scrubbed
    too; values of pydicom's ``PersonName`` type are dropped wherever they appear.

    Parameters
    ----------
    record : Mapping[str, Any]
        A row, metadata dict or provenance document.
    strict : bool
        Raise instead of dropping.

    Returns
    -------
    dict
        A new dict without identifying entries.

    Raises
    ------
    DataError
        With ``strict=True``, naming the offending key (never its value).
    """
    out: dict[str, Any] = {}
    for key, value in record.items():
        if _is_identifying_key(key) or _is_person_name(value):
            if strict:
                raise DataError(f"Refusing to write the identifying DICOM attribute {key!r}; drop or hash it first.")
            continue
        out[key] = _scrub_value(value, strict=strict)
    return out


def _scrub_value(value: Any, *, strict: bool) -> Any:
    if isinstance(value, Mapping):
        return scrub(value, strict=strict)
    if isinstance(value, (list, tuple)):
        kept = [_scrub_value(v, strict=strict) for v in value if not _is_person_name(v)]
        return type(value)(kept) if isinstance(value, tuple) else kept
    return value


def _is_person_name(value: Any) -> bool:
    return type(value).__name__ == "PersonName" and type(value).__module__.startswith("pydicom")


def scrub_frame(frame: Any, *, strict: bool = False) -> Any:
    """Drop identifying DICOM columns from a pandas DataFrame (same rule as ``scrub``).

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows to be written.
    strict : bool
        Raise instead of dropping.

    Returns
    -------
    pandas.DataFrame
        The frame without identifying columns (a copy when any is dropped).

    Raises
    ------
    DataError
        With ``strict=True`` when an identifying column is present.
    """
    bad = [c for c in frame.columns if _is_identifying_key(c)]
    if bad and strict:
        raise DataError(f"Refusing to write identifying DICOM columns {bad}; drop or hash them first.")
    return frame.drop(columns=bad) if bad else frame
