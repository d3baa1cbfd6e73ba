// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {IWorkloadVerifier} from "./IWorkloadVerifier.sol";
import {JobMarket} from "./JobMarket.sol";
import {ProviderRegistry} from "./ProviderRegistry.sol";
import {Int8Generator} from "./lib/Int8Generator.sol";
import {MerkleRfc6962} from "./lib/MerkleRfc6962.sol";

/// @title MatmulInt8Verifier
/// @notice Fraud proofs for matmul-int8/v1 jobs: C = A @ B with int8 inputs and int32 outputs is exact, so one
///         wrong element of a committed result can be shown wrong on chain, in one transaction and without an
///         arbiter. The element is recomputed from the inputs (generated from the seed, or proven against the
///         offer's input commitment `ab_root`) and compared with the committed one (a 4 KiB chunk of the result
///         proven against the job's RFC 6962 result root).
///         When the challenger has no copy of the result (the provider withheld it), `demandReveal` / `audit`
///         make the provider publish the chunk holding the element within `revealWindow`, or be slashed.
/// @dev Bonds: a challenger stakes `challengeBond`. Proven fraud returns it (and the market credits the
///      challenger half the provider's bond); a failed challenge pays it to the provider's payout address, which
///      prices griefing. The verifier only ever holds the bonds of open reveal demands.
contract MatmulInt8Verifier is IWorkloadVerifier, Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    bytes32 public constant WORKLOAD = keccak256("matmul-int8/v1");
    uint256 public constant CHUNK_SIZE = 4096;
    uint256 public constant MAX_DIM = 65536;
    uint256 public constant MAX_ELEMENTS = 1 << 28;
    uint64 public constant MIN_REVEAL_WINDOW = 60;
    uint64 public constant MAX_REVEAL_WINDOW = 7 days;

    /// @notice A job's params in structured form; `encodeParams` gives the canonical JSON the offer hashed.
    struct MatmulParams {
        uint32 m;
        uint32 k;
        uint32 n;
        bool supplied; // inputs supplied as a safetensors file committed by abRoot (else generated from seed)
        uint64 seed;
        bytes32 abRoot;
        bytes32 audit; // keccak256(abi.encode(secret)) of the requester's audit secret, 0 = none
    }

    /// @notice Row i of A and column j of B with their inclusion proofs under abRoot; all empty for seed jobs.
    struct SuppliedInputs {
        bytes row;
        bytes32[] rowProof;
        bytes col;
        bytes32[] colProof;
    }

    /// @notice An open reveal demand: the provider must publish the chunk holding C[i,j] before `deadline`.
    ///         m and n are kept because `reveal` takes no params; the struct fills exactly two slots.
    struct Demand {
        address challenger;
        uint64 deadline;
        uint32 i;
        uint32 j;
        int64 expected;
        uint96 bond;
        uint32 m;
        uint32 n;
    }

    JobMarket public immutable market;
    ProviderRegistry public immutable registry;
    IERC20 public immutable token;

    uint256 public challengeBond;
    uint64 public revealWindow;

    /// @notice The open demand on a job (challenger 0 when none).
    mapping(bytes32 jobId => Demand) public demands;

    event Challenged(
        bytes32 indexed jobId,
        address indexed challenger,
        uint256 i,
        uint256 j,
        int256 committed,
        int256 expected,
        bool fraud
    );
    event RevealDemanded(
        bytes32 indexed jobId,
        address indexed provider,
        address challenger,
        uint256 i,
        uint256 j,
        uint256 chunkIndex,
        uint64 deadline
    );
    event Audited(bytes32 indexed jobId, bytes32 secret, uint256 i, uint256 j);
    event ChunkRevealed(
        bytes32 indexed jobId, uint256 chunkIndex, bytes chunk, int256 committed, int256 expected, bool fraud
    );
    event RevealTimedOut(bytes32 indexed jobId, address challenger);
    event ChallengeBondSet(uint256 challengeBond);
    event RevealWindowSet(uint64 revealWindow);

    error WrongWorkload(bytes32 workload);
    error ParamsMismatch(bytes32 expected, bytes32 actual);
    error BadDimensions();
    error IndexOutOfRange(uint256 i, uint256 j);
    error BadChunkLength(uint256 expected, uint256 actual);
    error BadResultProof();
    error BadInputProof();
    error BadInputLength();
    error NoAuditCommitment();
    error BadAuditSecret();
    error NoDemand(bytes32 jobId);
    error RevealWindowOpen(uint64 deadline);
    error RevealWindowClosed(uint64 deadline);
    error InvalidRevealWindow(uint64 revealWindow);
    error BondTooLarge(uint256 bond);

    constructor(JobMarket market_, uint256 challengeBond_, uint64 revealWindow_, address initialOwner)
        Ownable(initialOwner)
    {
        market = market_;
        registry = market_.registry();
        token = market_.token();
        _setChallengeBond(challengeBond_);
        _setRevealWindow(revealWindow_);
    }

    function workload() external pure returns (bytes32) {
        return WORKLOAD;
    }

    // ================================================================ params and elements

    /// @notice The canonical params bytes (compact JSON, fixed key order) whose keccak256 an offer's paramsHash
    ///         must be: `{"m":M,"k":K,"n":N,"seed":S}` or `{"m":M,"k":K,"n":N,"input":"safetensors","ab_root":"0x.."}`,
    ///         with `,"audit":"0x.."` appended before the closing brace when an audit commitment is set.
    function encodeParams(MatmulParams calldata p) public pure returns (bytes memory) {
        string memory s = string.concat(
            '{"m":', Strings.toString(p.m), ',"k":', Strings.toString(p.k), ',"n":', Strings.toString(p.n)
        );
        if (p.supplied) {
            s = string.concat(s, ',"input":"safetensors","ab_root":"', Strings.toHexString(uint256(p.abRoot), 32), '"');
        } else {
            s = string.concat(s, ',"seed":', Strings.toString(p.seed));
        }
        if (p.audit != bytes32(0)) {
            s = string.concat(s, ',"audit":"', Strings.toHexString(uint256(p.audit), 32), '"');
        }
        return bytes(string.concat(s, "}"));
    }

    /// @notice C[i,j] recomputed from the inputs: generated from the seed, or the proven row of A and column of
    ///         B for supplied inputs (leaf r = row r of A, leaf m + c = column c of B, tree size m + n).
    function expectedElement(MatmulParams calldata p, uint256 i, uint256 j, SuppliedInputs calldata inputs)
        public
        pure
        returns (int256)
    {
        _checkDimensions(p);
        if (i >= p.m || j >= p.n) revert IndexOutOfRange(i, j);
        if (!p.supplied) return Int8Generator.seededDot(p.seed, i, j, p.k, p.n);
        if (inputs.row.length != p.k || inputs.col.length != p.k) revert BadInputLength();
        uint256 leaves = uint256(p.m) + p.n;
        if (
            !MerkleRfc6962.verifyInclusion(MerkleRfc6962.leafHash(inputs.row), i, leaves, inputs.rowProof, p.abRoot)
                || !MerkleRfc6962.verifyInclusion(
                    MerkleRfc6962.leafHash(inputs.col), uint256(p.m) + j, leaves, inputs.colProof, p.abRoot
                )
        ) revert BadInputProof();
        return Int8Generator.bytesDot(inputs.row, inputs.col);
    }

    /// @notice The element an audit samples: fixed by the requester's secret (committed in the offer before
    ///         the result existed) and the result root (committed by the provider before the secret is shown),
    ///         so neither side can steer it.
    function auditPosition(MatmulParams calldata p, bytes32 secret, bytes32 resultRoot)
        public
        pure
        returns (uint256 i, uint256 j)
    {
        _checkDimensions(p);
        uint256 idx = uint256(keccak256(abi.encode(secret, resultRoot))) % (uint256(p.m) * p.n);
        i = idx / p.n;
        j = idx % p.n;
    }

    // ================================================================ one-transaction fraud proof

    /// @notice Proves (or fails to prove) that C[i,j] of a submitted result is wrong, with the chunk of the
    ///         result holding it and its inclusion proof. The caller must have approved `challengeBond`.
    function challenge(
        JobMarket.JobOffer calldata offer,
        MatmulParams calldata p,
        uint256 i,
        uint256 j,
        SuppliedInputs calldata inputs,
        bytes calldata chunk,
        bytes32[] calldata proof
    ) external nonReentrant returns (bool fraud) {
        bytes32 jobId = _checkOffer(offer, p);
        int256 expected = expectedElement(p, i, j, inputs);
        // Freezes the job (and checks it is Submitted, inside its window) before the root is trusted.
        market.openChallenge(offer);
        int256 committed = _committedElement(jobId, p.m, p.n, i, j, chunk, proof);
        fraud = committed != expected;
        emit Challenged(jobId, msg.sender, i, j, committed, expected, fraud);
        market.closeChallenge(offer, fraud, msg.sender);
        // The bond never rests here: on fraud it stays with the challenger, otherwise it goes straight to the
        // provider's payout address (the same net effect as pulling it and paying it out, in one transfer).
        uint256 bond = challengeBond;
        if (!fraud && bond != 0) token.safeTransferFrom(msg.sender, _providerPayout(jobId), bond);
    }

    // ================================================================ reveal demands

    /// @notice Demands that the provider publish the chunk holding C[i,j] within `revealWindow`; the job is
    ///         frozen meanwhile. For a challenger without the result (withheld, or not matching its root).
    function demandReveal(
        JobMarket.JobOffer calldata offer,
        MatmulParams calldata p,
        uint256 i,
        uint256 j,
        SuppliedInputs calldata inputs
    ) external nonReentrant {
        bytes32 jobId = _checkOffer(offer, p);
        _demand(offer, jobId, p, i, j, inputs);
    }

    /// @notice A reveal demand at the element sampled by the requester's audit secret (see auditPosition).
    function audit(
        JobMarket.JobOffer calldata offer,
        MatmulParams calldata p,
        bytes32 secret,
        SuppliedInputs calldata inputs
    ) external nonReentrant returns (uint256 i, uint256 j) {
        bytes32 jobId = _checkOffer(offer, p);
        if (p.audit == bytes32(0)) revert NoAuditCommitment();
        if (keccak256(abi.encode(secret)) != p.audit) revert BadAuditSecret();
        (i, j) = auditPosition(p, secret, market.resultRootOf(jobId));
        emit Audited(jobId, secret, i, j);
        _demand(offer, jobId, p, i, j, inputs);
    }

    /// @notice Answers a demand with the chunk holding the demanded element (anyone may send it, usually the
    ///         provider's node). The chunk is published in ChunkRevealed; a wrong element is fraud all the same.
    function reveal(JobMarket.JobOffer calldata offer, bytes calldata chunk, bytes32[] calldata proof)
        external
        nonReentrant
        returns (bool fraud)
    {
        bytes32 jobId = market.hashOffer(offer);
        Demand memory d = demands[jobId];
        if (d.challenger == address(0)) revert NoDemand(jobId);
        if (block.timestamp > d.deadline) revert RevealWindowClosed(d.deadline);
        int256 committed = _committedElement(jobId, d.m, d.n, d.i, d.j, chunk, proof);
        fraud = committed != d.expected;
        delete demands[jobId];
        emit ChunkRevealed(jobId, (4 * (uint256(d.i) * d.n + d.j)) / CHUNK_SIZE, chunk, committed, d.expected, fraud);
        market.closeChallenge(offer, fraud, d.challenger);
        if (d.bond != 0) token.safeTransfer(fraud ? d.challenger : _providerPayout(jobId), d.bond);
    }

    /// @notice After an unanswered demand's deadline: the provider is treated as a fraud (slashed) and the
    ///         challenger gets its bond back. Anyone may call it.
    function revealTimeout(JobMarket.JobOffer calldata offer) external nonReentrant {
        bytes32 jobId = market.hashOffer(offer);
        Demand memory d = demands[jobId];
        if (d.challenger == address(0)) revert NoDemand(jobId);
        if (block.timestamp <= d.deadline) revert RevealWindowOpen(d.deadline);
        delete demands[jobId];
        emit RevealTimedOut(jobId, d.challenger);
        market.closeChallenge(offer, true, d.challenger);
        if (d.bond != 0) token.safeTransfer(d.challenger, d.bond);
    }

    // ================================================================ owner

    function setChallengeBond(uint256 bond) external onlyOwner {
        _setChallengeBond(bond);
    }

    function setRevealWindow(uint64 window) external onlyOwner {
        _setRevealWindow(window);
    }

    // ================================================================ internals

    function _demand(
        JobMarket.JobOffer calldata offer,
        bytes32 jobId,
        MatmulParams calldata p,
        uint256 i,
        uint256 j,
        SuppliedInputs calldata inputs
    ) private {
        int256 expected = expectedElement(p, i, j, inputs);
        market.openChallenge(offer);
        uint64 deadline = uint64(block.timestamp) + revealWindow;
        uint256 bond = challengeBond;
        // i, j < 65536 and |expected| <= 65536 * 128 * 128, so every narrowing below is exact.
        demands[jobId] = Demand({
            challenger: msg.sender,
            deadline: deadline,
            i: uint32(i),
            j: uint32(j),
            expected: int64(expected),
            bond: uint96(bond),
            m: p.m,
            n: p.n
        });
        emit RevealDemanded(
            jobId, market.getJob(jobId).provider, msg.sender, i, j, (4 * (i * p.n + j)) / CHUNK_SIZE, deadline
        );
        if (bond != 0) token.safeTransferFrom(msg.sender, address(this), bond);
    }

    function _checkOffer(JobMarket.JobOffer calldata offer, MatmulParams calldata p) private view returns (bytes32) {
        if (offer.workload != WORKLOAD) revert WrongWorkload(offer.workload);
        bytes32 actual = keccak256(encodeParams(p));
        if (actual != offer.paramsHash) revert ParamsMismatch(offer.paramsHash, actual);
        return market.hashOffer(offer);
    }

    /// @dev The limits of node/compute/workloads/matmul_int8.py: every dimension in [1, 65536], every matrix
    ///      (A, B and C) at most 2^28 elements.
    function _checkDimensions(MatmulParams calldata p) private pure {
        uint256 m = p.m;
        uint256 k = p.k;
        uint256 n = p.n;
        if (
            m == 0 || k == 0 || n == 0 || m > MAX_DIM || k > MAX_DIM || n > MAX_DIM || m * k > MAX_ELEMENTS
                || k * n > MAX_ELEMENTS || m * n > MAX_ELEMENTS
        ) revert BadDimensions();
    }

    /// @dev C[i,j] read from its chunk of the committed result (int32 little-endian at byte 4 * (i * n + j)),
    ///      after proving the chunk against the job's result root.
    function _committedElement(
        bytes32 jobId,
        uint256 m,
        uint256 n,
        uint256 i,
        uint256 j,
        bytes calldata chunk,
        bytes32[] calldata proof
    ) private view returns (int256 v) {
        uint256 offset = 4 * (i * n + j);
        _checkChunk(jobId, 4 * m * n, offset / CHUNK_SIZE, chunk, proof);
        uint256 at = offset % CHUNK_SIZE;
        assembly ("memory-safe") {
            let w := calldataload(add(chunk.offset, at)) // bytes at..at+3 in the top four bytes
            let le := or(or(byte(0, w), shl(8, byte(1, w))), or(shl(16, byte(2, w)), shl(24, byte(3, w))))
            v := signextend(3, le)
        }
    }

    /// @dev Chunk `index` of a `size`-byte result: 4096 bytes, or the remainder for the last one, and included
    ///      under the job's result root.
    function _checkChunk(bytes32 jobId, uint256 size, uint256 index, bytes calldata chunk, bytes32[] calldata proof)
        private
        view
    {
        uint256 chunks = (size + CHUNK_SIZE - 1) / CHUNK_SIZE;
        uint256 expectedLength = index == chunks - 1 ? size - index * CHUNK_SIZE : CHUNK_SIZE;
        if (chunk.length != expectedLength) revert BadChunkLength(expectedLength, chunk.length);
        bytes32 root = market.resultRootOf(jobId);
        if (!MerkleRfc6962.verifyInclusion(MerkleRfc6962.leafHash(chunk), index, chunks, proof, root)) {
            revert BadResultProof();
        }
    }

    function _providerPayout(bytes32 jobId) private view returns (address) {
        return registry.payoutOf(market.getJob(jobId).provider);
    }

    function _setChallengeBond(uint256 bond) private {
        if (bond > type(uint96).max) revert BondTooLarge(bond);
        challengeBond = bond;
        emit ChallengeBondSet(bond);
    }

    function _setRevealWindow(uint64 window) private {
        if (window < MIN_REVEAL_WINDOW || window > MAX_REVEAL_WINDOW) revert InvalidRevealWindow(window);
        revealWindow = window;
        emit RevealWindowSet(window);
    }
}
