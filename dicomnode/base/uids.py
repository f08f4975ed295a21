"""UIDs of the node's results: derived from the job (study, version) and the object, so a job that runs again (a
worker died, the node restarted) makes the same instances, and a PACS sees a re-send as the same object."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import generate_uid


@dataclass(frozen=True)
class ResultUids:
    """``uid("seg")``: the same UID for the same job and name; random where there is no job (``seed`` None)."""

    seed: str | None = None

    def uid(self, name: str) -> str:
        return str(generate_uid(entropy_srcs=[self.seed, name])) if self.seed else str(generate_uid())


def job_seed(study_uid: str, version: int) -> str:
    return f"{study_uid}/v{version}"


#: Random UIDs, for results made outside a job (``dicomnode run``, tests).
RANDOM_UIDS = ResultUids()


#: (0002,0012) Implementation Class UID of the files the receiver writes and of its associations: fixed, derived
#: from the project's name under pydicom's root.
IMPLEMENTATION_CLASS_UID = str(generate_uid(entropy_srcs=["dicomnode implementation class"]))
