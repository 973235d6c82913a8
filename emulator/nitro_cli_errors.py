"""nitro-cli's numbered errors E00..E60, as nitro-cli prints and explains them.

Facts from aws/aws-nitro-enclaves-cli: the code of each ``NitroCliErrorEnum`` variant and the
text after ``[ Exx ]`` (``src/common/document_errors.rs``, ``ERROR_CODES``,
``get_detailed_info``) and the longer text of ``nitro-cli explain --error-code Exx``
(``explain_error``). nitro-cli exits with the numeric code (``src/common/mod.rs``).

Usage::

    raise nitro_cli_error("EifParsingError", detail="the EIF's CRC does not match ...")
    raise nitro_cli_error("MissingArgument", "--memory")   # fills nitro-cli's placeholder
"""

from __future__ import annotations

from dataclasses import dataclass

from emulator.errors import NitroCliError

#: The placeholder nitro-cli prints for a missing detail (``get_detailed_info``).
MISSING_INFO = "MISSING_INFO"

_POOL_HINT = "and then enable the nitro-enclaves-allocator.service."


@dataclass(frozen=True)
class NitroCliErrorInfo:
    """One row of nitro-cli's error table.

    Attributes:
        code: the number (also the exit status).
        name: the ``NitroCliErrorEnum`` variant.
        templates: the message forms; ``{0}``, ``{1}``... are nitro-cli's
            ``additional_info`` items. Several forms when nitro-cli picks one by how
            many items it has (E19, E26).
        explanation: what ``nitro-cli explain`` prints (its own text where it has one).
    """

    code: int
    name: str
    templates: tuple[str, ...]
    explanation: str

    @property
    def label(self) -> str:
        """``"E04"`` for code 4."""
        return f"E{self.code:02d}"

    def message(self, *info: str) -> str:
        """The text after ``[ Exx ]``, filling placeholders as nitro-cli does."""
        ranked = sorted(self.templates, key=_placeholder_count)
        chosen = ranked[0]
        for template in ranked:
            if _placeholder_count(template) <= len(info):
                chosen = template
        needed = _placeholder_count(chosen)
        padded = list(info[:needed]) + [MISSING_INFO] * max(0, needed - len(info))
        return chosen.format(*padded)


def _placeholder_count(template: str) -> int:
    count = 0
    while "{%d}" % count in template:
        count += 1
    return count


def _row(code: int, name: str, message: str | tuple[str, ...], explain: str = "") -> NitroCliErrorInfo:
    templates = (message,) if isinstance(message, str) else message
    return NitroCliErrorInfo(code, name, templates, explain or templates[0])


_IOCTL_TAIL = (
    " In this case, the error backtrace provides detailed information on what specifically"
    " failed during the ioctl."
)
_BACKTRACE_TAIL = " In this case, the error backtrace provides detailed information on the failure reason."

_ROWS: tuple[NitroCliErrorInfo, ...] = (
    _row(0, "UnspecifiedError", "Unspecified error. This is used as a catch-all error and should not be used in the code."),
    _row(
        1,
        "MissingArgument",
        "Missing mandatory argument. User did not provide the `{0}` argument.",
        "Missing mandatory argument. Such error appears when the Nitro CLI is requested to perform an operation, but not all of the mandatory arguments were supplied.\n\tExample: `nitro-cli run-enclave --cpu-count 2 --eif-path /path/to/my/eif`. Note that in this case, the mandatory parameter `--memory` is missing a value.",
    ),
    _row(
        2,
        "ConflictingArgument",
        "Conflicting arguments. User provided both `{0}` and `{1}`.",
        "CLI conflicting arguments. Such error appears when the Nitro CLI is supplied two contradicting arguments at the same time, such as `--cpu-count` and `--cpu-ids`.\nIn this case, only one of the parameters should be supplied.",
    ),
    _row(
        3,
        "InvalidArgument",
        "Invalid argument provided. The parameter `{0}` is not a valid integer (`{1}`)",
        "Invalid argument provided. Such error appears when the type of at least one of the arguments provided to the Nitro CLI does not match the expected type of that parameter.\n\tExample: `nitro-cli run-enclave --cpu-count 1z --memory 80 --eif-path /path/to/my/eif`. In this case, `cpu-count` is not a valid integer value.",
    ),
    _row(
        4,
        "SocketPairCreationFailure",
        "Socket pair creation failure. Such error appears when the Nitro CLI process attempts to open a stream pair in order to send a command to the enclave process but the stream initialization fails.",
        "Socket pair creation failure. Such error apears when the Nitro CLI process attempts to open a stream pair in order to send a command to the enclave process, but the stream initialization fails.",
    ),
    _row(
        5,
        "ProcessSpawnFailure",
        "Process spawn failure. Such error appears when the main Nitro CLI process fails to spawn the enclave process, in order to complete a `run-enclave` command.",
        "Process spawn failure. Such error appears when the main Nitro CLI process failed to spawn the enclave process, in order to complete a `run-enclave` command.",
    ),
    _row(
        6,
        "DaemonizeProcessFailure",
        "Daemonize process failure. Such error appears when the system fails to daemonize a newly spawned enclave process.",
        "Daemonize process failure. Such error appears when the system fails to daemonize the newly spawned enclave process.",
    ),
    _row(7, "ReadFromDiskFailure", "Read from disk failure. Such error appears when the Nitro CLI process fails to read the content of the enclave sockets directory (usually '/run/nitro_enclaves/') in order to perform a `describe-enclave` operation. Check that the directory exists and it has proper permissions, or run the Nitro Enclaves configuration script in order to (re)configure the environment."),
    _row(8, "UnusableConnectionError", "Unusable connection error. Such error appears when the Nitro CLI process attempts to open a connection to a non-existing or previously closed enclave descriptor"),
    _row(9, "SocketCloseError", "Socket close error. Such error appears when the system fails to successfully close a communication channel."),
    _row(10, "SocketConnectTimeoutError", "Socket connect set timeout error. Such error appears when the system fails to configure a specific timeout for a given socket. May arise when trying to connect to an enclave's console."),
    _row(11, "SocketError", "Socket error. This is used as an error for catching any other socket operation errors not covered by previous custom errors."),
    _row(12, "EpollError", "Epoll error. Such error appears, for instance, when the system fails to register a specific enclave descriptor with epoll in order to monitor events for it."),
    _row(13, "InotifyError", "Inotify error. Such error appears when the system fails to configure a socket for monitorization."),
    _row(14, "InvalidCommand", "Invalid command. Such error appears when an unknown command and / or unknown arguments are sent through a socket."),
    _row(15, "LockAcquireFailure", "Lock acquire failure. Such error appears when the system fails to obtain the lock for an object with concurrent access, such as a structure containing information about a running enclave."),
    _row(16, "ThreadJoinFailure", "Thread join failure. Such error appears when the system fails to successfully join a thread, after it finished executing."),
    _row(17, "SerdeError", "Serde error. Such error appears when serializing / deserializing a command or response fails."),
    _row(18, "FilePermissionsError", "File permissions error. Such error appears when a user other than the owner of the logging file (usually '/var/log/nitro_enclaves/nitro_enclaves.log') attempts to change the file permissions"),
    _row(
        19,
        "FileOperationFailure",
        (
            "File operation failure. Such error appears when the system fails to perform the requested file operations, such as opening the EIF file when launching an enclave, or seeking to a specific offset in the EIF file, or writing to the log file.",
            "File operation failure. Such error appears when the system fails to perform the requested file operations, such as opening the EIF file when launching an enclave, or seeking to a specific offset in the EIF file, or writing to the log file.\nFile: '{0}', failing operation: '{1}'.",
        ),
    ),
    _row(
        20,
        "InvalidCpuConfiguration",
        "Invalid CPU configuration. User provided `{0}` contains same CPU(s) (CPU(s) {1}) multiple times.",
        "Invalid CPU configuration. Such error appears when the user supplies the same CPU ID multiple times.\n\tExample: `nitro-cli run-enclave --cpu-ids 1 1 --memory 80 --eif-path /path/to/my/eif`. In this case, CPU ID `1` has been selected twice.",
    ),
    _row(
        21,
        "NoSuchCpuAvailableInPool",
        "No such CPU available in the pool. User provided `{0}` contains CPU {1}, which is not available in the pool.\nYou can add a specific CPU to the CPU pool by editing the `cpu_pool` value from '/etc/nitro_enclaves/allocator.yaml' " + _POOL_HINT,
        "No such CPU available in the pool. Such error appears when the user requests to run an enclave with at least one CPU ID which does not exist in the CPU pool.\n\tExample: (configured CPU pool: [1,9]) `nitro-cli run-enclave --cpu-ids 1 2 --memory 80 --eif-path /path/to/my/eif`. In this case, CPU 2 is not in the configured CPU pool.",
    ),
    _row(
        22,
        "InsufficientCpus",
        "Insufficient CPUs available in the pool. User provided `{0}` is {1}, which is more than the configured CPU pool size.\nYou can increase the CPU pool size by editing the `cpu_count` value from '/etc/nitro_enclaves/allocator.yaml' " + _POOL_HINT,
        "Insufficient CPUs available in the pool. Such error appears when the user requests to run an enclave with more CPUs that available in the CPU pool.\n\tExample: (configured CPU pool: [1,9]) `nitro-cli run-enclave --cpu-count 4 --memory 80 --eif-path /path/to/my/eif`. In this case, the user requested 4 CPUs, but the CPU pool contains only 2.",
    ),
    _row(23, "MalformedCpuId", "Malformed CPU ID error. Such error appears when a `lscpu` line is malformed and reports an invalid online CPUs list."),
    _row(
        24,
        "CpuError",
        "CPU error. Such error appears when a CPU line interval is invalid (for instance, 0-3-7)",
        "CPU error. Such error appears when a CPU line interval is invalid (as in 0-3-7)",
    ),
    _row(25, "NoSuchHugepageFlag", "No such hugepage flag error. Such error appears when the enclave process attempts to use an invalid hugepage size (size other than the known hugepage sizes) for initializing the enclave memory."),
    _row(
        26,
        "InsufficientMemoryRequested",
        (
            "Insufficient memory requested. User provided `{0}` is {1} MB, and memory should be greated than 0 MB.",
            "Insufficient memory requested. User provided `{0}` is {1} MB, but based on the EIF file size, the minimum memory should be {2} MB",
        ),
        "Insufficient memory requested. Such error appears when the user requests to launch an enclave with not enough memory. The enclave memory should be at least equal to the size of the EIF file used for launching the enclave.\n\tExample: (EIF file size: 11MB) `nitro-cli run-enclave --cpu-count 2 --memory 5 --eif-path /path/to/my/eif`. In this case, the user requested to run an enclave with only 5MB of memory, whereas the EIF file alone requires 11MB.",
    ),
    _row(
        27,
        "InsufficientMemoryAvailable",
        "Insufficient memory available. User provided `{0}` is {1} MB, which is more than the available hugepage memory.\nYou can increase the available memory by editing the `memory_mib` value from '/etc/nitro_enclaves/allocator.yaml' " + _POOL_HINT,
        "Insufficient memory available. Such error appears when the user requests to launch an enclave with more memory than available. The enclave memory should be at most equal to the size of the configured hugepage memory.\n\tExample: (previously configured 80MB of hugepage memory) `nitro-cli run-enclave --cpu-count 2 --memory 100 --eif-path /path/to/my/eif`. In this case, the user requested to run an enclave with 100MB of memory, whereas the system has only 80MB available for enclaves. As a solution, (re)configure the Nitro Enclaves environment, specifying a higher value for the available memory.",
    ),
    _row(28, "InvalidEnclaveFd", "Invalid enclave descriptor. Such error appears when the NE_CREATE_VM ioctl returns with an error."),
    _row(29, "IoctlFailure", "Ioctl failure. Such error is used as a general ioctl error and appears whenever an ioctl fails." + _IOCTL_TAIL),
    _row(30, "IoctlImageLoadInfoFailure", "Ioctl image get load info failure. Such error appears when the ioctl used for getting the memory load information fails." + _IOCTL_TAIL),
    _row(31, "IoctlSetMemoryRegionFailure", "Ioctl set memory region failure. Such error appears when the ioctl used for setting a given memory region fails." + _IOCTL_TAIL),
    _row(32, "IoctlAddVcpuFailure", "Ioctl add vCPU failure. Such error appears when the ioctl used for adding a vCPU fails." + _IOCTL_TAIL),
    _row(33, "IoctlEnclaveStartFailure", "Ioctl start enclave failure. Such error appears when the ioctl used for starting an enclave fails. In this case, the error backtrace provides details information on what specifically failed during the ioctl."),
    _row(34, "MemoryOverflow", "Memory overflow. Such error may appear during loading the EIF in the memory regions which will be conceded to the future enclave, if the regions offset plus the EIF file size exceeds the maximum address of the target platform."),
    _row(35, "EifParsingError", "EIF file parsing error. Such errors appear when attempting to fill a memory region with a section of the EIF file, but reading the entire section fails. This might indicate that the required hugepages are not available."),
    _row(36, "EnclaveBootFailure", "Enclave boot failure. Such error appears when attempting to receive the `ready` signal from a freshly booted enclave. It arises in several contexts, for instance, when the enclave is booted from an invalid EIF file and the enclave process immediately exits, failing to submit the `ready` signal. In this case, the error backtrace provides detailed information on what specifically failed during the enclave boot process."),
    _row(37, "EnclaveEventWaitError", "Enclave event wait error. Such error appears when monitoring an enclave descriptor for events fails."),
    _row(38, "EnclaveProcessCommandNotExecuted", "Enclave process command not executed error. Such error appears when at least one enclave fails to provide the description information."),
    _row(39, "EnclaveProcessConnectionFailure", "Enclave process connection failure. Such error appears when the enclave manager fails to connect to at least one enclave process for retrieving the description information."),
    _row(40, "SocketPathNotFound", "Socket path not found. Such error appears when the Nitro CLI process fails to build the corresponding socket path starting from a given enclave ID."),
    _row(41, "EnclaveProcessSendReplyFailure", "Enclave process send reply failure. Such error appears when the enclave process fails to submit the status code to the Nitro CLI process after performing a run / describe / terminate command."),
    _row(42, "EnclaveMmapError", "Enclave mmap error. Such error appears when allocating the enclave memory fails."),
    _row(43, "EnclaveMunmapError", "Enclave munmap error. Such error appears when unmapping the enclave memory fails."),
    _row(44, "EnclaveConsoleConnectionFailure", "Enclave console connection failure. Such error appears when the Nitro CLI process fails to establish a connection to a running enclave's console."),
    _row(45, "EnclaveConsoleReadError", "Enclave console read error. Such error appears when reading from a running enclave's console fails."),
    _row(46, "EnclaveConsoleWriteOutputError", "Enclave console write output error. Such error appears when writing the information retrieved from a running enclave's console (to a given stream) fails."),
    _row(47, "IntegerParsingError", "Integer parsing error. Such error appears when trying to connect to a running enclave's console, but the enclave CID cannot be parsed correctly."),
    _row(48, "EifBuildingError", "EIF building error. Such error appears when trying to build an EIF file." + _BACKTRACE_TAIL),
    _row(49, "DockerImageBuildError", "Docker image build error. Such error appears when trying to build and EIF file, but building the corresponding docker image fails." + _BACKTRACE_TAIL),
    _row(50, "DockerImagePullError", "Docker image pull error. Such error appears when trying to build an EIF file, but pulling the corresponding docker image fails. In this case, the error backtrace provides detailed informatino on the failure reason."),
    _row(51, "ArtifactsPathNotSet", "Artifacts path environment variable not set. Such error appears when trying to build an EIF file, but the artifacts path environment variable is not set."),
    _row(52, "BlobsPathNotSet", "Blobs path environment variable not set. Such error appears when trying to build an EIF file, but the blobs path environment variable is not set."),
    _row(53, "ClockSkewError", "Clock skew error. Such error appears when continuously reading from a running enclave's console, but measuring the time elapsed between consecutive reads failed."),
    _row(54, "SignalMaskingError", "Signal masking error. Such error appears if attempting to mask specific signals before creating an enclave process fails."),
    _row(55, "SignalUnmaskingError", "Signal unmasking error. Such error appears if attempting to unmask specific signals after creating an enclave process fails."),
    _row(56, "LoggerError", "Logger error. Such error appears when attempting to initialize the underlying logging system fails."),
    # E57..E59: nitro-cli's explain_error has no text for these ("No such error code");
    # nitro-emu explains them with the detailed message instead.
    _row(57, "HasherError", "Hasher error. Such error appears when trying to initialize a hasher or write bytes to it, resulting in a IO error."),
    _row(58, "EnclaveNamingError", "Naming error. Such error appears when trying to perform an enclave operation using the enclave name and the name is invalid."),
    _row(59, "EIFSignatureCheckerError", "EIF signature checker error. Such error appears when validation of the signing certificate fails."),
    # E60 came with sign-eif (nitro-cli 1.4.0); explain_error has its own text for it.
    _row(60, "EIFSigningError", "Signing error. Such error appears if incorrect key or certificate paths are provided, or when AWS credenrials need to be refreshed to use a KMS key."),
)

#: Rows by code, E00 first.
ERRORS_BY_CODE: dict[int, NitroCliErrorInfo] = {row.code: row for row in _ROWS}
#: Rows by ``NitroCliErrorEnum`` variant name.
ERRORS_BY_NAME: dict[str, NitroCliErrorInfo] = {row.name: row for row in _ROWS}


class UnknownErrorCode(NitroCliError):
    """``explain`` was asked about a code nitro-cli does not have (reported as E03)."""

    def __init__(self, text: str) -> None:
        super().__init__(
            3,
            f"Invalid argument provided. `--error-code` must be one of E00..E60, not `{text}`.",
        )
        self.text = text


def lookup(code: int | str) -> NitroCliErrorInfo:
    """The row for a number (``36``), a label (``"E36"``, ``"e36"``, ``"36"``) or a variant name.

    Raises:
        UnknownErrorCode: nitro-cli has no such error.
    """
    if isinstance(code, int):
        row = ERRORS_BY_CODE.get(code)
    elif code in ERRORS_BY_NAME:
        row = ERRORS_BY_NAME[code]
    else:
        digits = code.strip().upper().removeprefix("E")
        row = ERRORS_BY_CODE.get(int(digits)) if digits.isdecimal() and len(digits) <= 2 else None
    if row is None:
        raise UnknownErrorCode(str(code))
    return row


def nitro_cli_error(code: int | str, *info: str, detail: str | None = None) -> NitroCliError:
    """Build the :class:`NitroCliError` nitro-cli would report.

    Args:
        code: the variant name (``"EifParsingError"``), label (``"E35"``) or number.
        *info: nitro-cli's ``additional_info`` items for the message's placeholders.
        detail: nitro-emu's one line of evidence and what to do, appended after the message.
    """
    row = lookup(code)
    message = row.message(*info)
    if detail:
        # nitro-cli's texts do not all end a sentence; ours start one.
        message = f"{message.rstrip()}{'' if message.rstrip().endswith(('.', ':', '!', '?')) else '.'} {detail}"
    return NitroCliError(row.code, message)


def explain(code: int | str) -> str:
    """What ``nitro-emu explain --error-code Exx`` prints (nitro-cli's ``explain_error``)."""
    return lookup(code).explanation
