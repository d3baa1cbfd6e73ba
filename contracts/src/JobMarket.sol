// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

import {ProviderRegistry} from "./ProviderRegistry.sol";
import {IWorkloadVerifier} from "./IWorkloadVerifier.sol";

/// @title JobMarket
/// @notice Escrowed GPU jobs: a requester signs an offer (EIP-712), anyone posts it with the payment pulled
///         into escrow, a registered provider claims it against a bond of its stake, submits a Merkle root of
///         the result, and is paid after a challenge window unless the requester disputes or a workload
///         verifier proves fraud. Money only moves out through pull payments (withdraw).
/// @dev The job id is the offer's EIP-712 digest, so any field of the offer can be proven later by passing
///      the offer back (see openChallenge); storage keeps only what the market's own rules need.
contract JobMarket is Ownable2Step, Pausable, ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;

    struct JobOffer {
        address requester;
        address provider; // 0 = open to any registered provider
        bytes32 workload; // keccak256("name/version")
        bytes32 paramsHash; // keccak256(params)
        bytes32 inputHash;
        string inputURI;
        uint256 payment;
        uint256 providerBond;
        uint64 maxDuration; // seconds from claim to submit
        uint64 expiry; // unix time after which the offer can no longer be posted or claimed
        uint256 nonce;
    }

    enum JobState {
        None,
        Open,
        Claimed,
        Submitted,
        Disputed,
        Challenged,
        Finalized,
        Cancelled,
        Expired,
        Slashed
    }

    /// @dev Two storage slots per job (plus the result root once submitted). `due` is the offer expiry
    ///      while Open, the submit deadline while Claimed, and the end of the challenge window from
    ///      Submitted on. `providerId` is the registry's compact id: the addressed provider while Open (0 for
    ///      an open offer), the claiming provider from Claimed on.
    struct JobRecord {
        address requester;
        JobState state;
        uint40 due;
        uint16 feeBps; // fee snapshot at post time: the owner cannot raise the fee on a posted job
        uint32 providerId;
        uint112 payment;
        uint112 providerBond;
        uint32 maxDuration;
    }

    /// @notice A job as integrators want to read it.
    struct Job {
        address requester;
        address provider;
        JobState state;
        uint64 due;
        uint16 feeBps;
        uint256 payment;
        uint256 providerBond;
        uint64 maxDuration;
        bytes32 resultRoot;
    }

    bytes32 public constant OFFER_TYPEHASH = keccak256(
        "JobOffer(address requester,address provider,bytes32 workload,bytes32 paramsHash,bytes32 inputHash,"
        "string inputURI,uint256 payment,uint256 providerBond,uint64 maxDuration,uint64 expiry,uint256 nonce)"
    );
    uint16 public constant MAX_FEE_BPS = 1_000; // 10 %
    uint16 public constant BPS = 10_000;
    uint64 public constant MIN_CHALLENGE_WINDOW = 1 minutes;
    uint64 public constant MAX_CHALLENGE_WINDOW = 30 days;
    uint64 public constant MAX_DURATION = 365 days;

    IERC20 public immutable token;
    ProviderRegistry public immutable registry;

    // One slot for the parameters every finalize reads.
    address public treasury;
    uint16 public feeBps;
    uint64 public challengeWindow;

    address public arbiter;
    uint256 public disputeBond;

    mapping(bytes32 workload => address) public verifiers;
    mapping(bytes32 jobId => JobRecord) private _jobs;
    mapping(bytes32 jobId => bytes32) public resultRootOf;
    mapping(bytes32 jobId => uint256) public disputeBondOf;
    mapping(address requester => mapping(uint256 word => uint256)) public nonceBitmap;
    mapping(address account => uint256) public balanceOf;

    event OfferPosted(
        bytes32 indexed jobId,
        address indexed requester,
        address indexed provider,
        JobOffer offer,
        bytes params,
        bytes signature
    );
    event OfferCancelled(bytes32 indexed jobId);
    event NonceInvalidated(address indexed requester, uint256 nonce);
    event JobClaimed(bytes32 indexed jobId, address indexed provider, uint64 deadline);
    event ResultSubmitted(
        bytes32 indexed jobId,
        address indexed provider,
        bytes32 resultRoot,
        uint64 resultSize,
        string resultURI,
        uint64 challengeWindowEnd
    );
    event JobDisputed(bytes32 indexed jobId, address indexed requester, uint256 disputeBond);
    event DisputeResolved(bytes32 indexed jobId, bool providerWasRight);
    event ChallengeOpened(bytes32 indexed jobId, address indexed verifier);
    event ChallengeClosed(bytes32 indexed jobId, bool fraud, address challenger);
    event JobFinalized(
        bytes32 indexed jobId, uint32 indexed providerId, address indexed payout, uint256 amount, uint256 fee
    );
    event JobExpired(bytes32 indexed jobId, uint256 refund, uint256 slashed);
    event ProviderSlashed(bytes32 indexed jobId, uint32 indexed providerId, uint256 amount);
    event Credited(address indexed account, uint256 amount);
    event Withdrawn(address indexed account, address indexed to, uint256 amount);
    event FeeSet(uint16 feeBps);
    event ChallengeWindowSet(uint64 challengeWindow);
    event ArbiterSet(address arbiter);
    event TreasurySet(address treasury);
    event DisputeBondSet(uint256 disputeBond);
    event VerifierSet(bytes32 indexed workload, address verifier);

    error ZeroAddress();
    error OfferExpired(uint64 expiry);
    error InvalidDuration(uint64 maxDuration);
    error ZeroPayment();
    error AmountTooLarge();
    error ParamsHashMismatch(bytes32 expected, bytes32 actual);
    error NonceUsed(address requester, uint256 nonce);
    error InvalidSignature();
    error InvalidState(bytes32 jobId, JobState state);
    error NotRequester(address caller);
    error NotProvider(address caller);
    error NotArbiter(address caller);
    error NotVerifier(address caller);
    error ProviderMismatch(address expected, address caller);
    error DeadlinePassed(uint64 deadline);
    error EmptyResult();
    error UnknownProvider(address provider);
    error ChallengeWindowOpen(uint64 windowEnd);
    error ChallengeWindowClosed(uint64 windowEnd);
    error NotExpirable(bytes32 jobId, JobState state, uint64 due);
    error NothingToWithdraw();
    error FeeTooHigh(uint16 feeBps, uint16 maxFeeBps);
    error InvalidChallengeWindow(uint64 window);
    error VerifierWorkloadMismatch(bytes32 expected, bytes32 actual);

    constructor(
        ProviderRegistry registry_,
        address treasury_,
        uint16 feeBps_,
        uint64 challengeWindow_,
        address arbiter_,
        address initialOwner
    ) Ownable(initialOwner) EIP712("gpunode JobMarket", "1") {
        if (address(registry_) == address(0)) revert ZeroAddress();
        registry = registry_;
        token = registry_.token();
        _setTreasury(treasury_);
        _setFee(feeBps_);
        _setChallengeWindow(challengeWindow_);
        arbiter = arbiter_;
        emit ArbiterSet(arbiter_);
    }

    // ================================================================ offers

    /// @notice Posts a signed offer and pulls its payment from the requester into escrow. Callable by anyone,
    ///         so a relayer can post for a gasless requester; the requester must have approved the market.
    function postOffer(JobOffer calldata offer, bytes calldata params, bytes calldata signature)
        external
        whenNotPaused
        nonReentrant
        returns (bytes32 jobId)
    {
        uint32 addressed;
        if (offer.provider != address(0)) {
            addressed = registry.idOf(offer.provider);
            if (addressed == 0) revert UnknownProvider(offer.provider);
        }
        // An expiry beyond uint40 (year 36812) is the same as no expiry; clamp rather than refuse.
        uint64 expiry = offer.expiry > type(uint40).max ? type(uint40).max : offer.expiry;
        jobId = _post(offer, params, signature, JobState.Open, expiry, addressed);
    }

    /// @notice Posts and claims in one transaction: the path for offers sent straight to a provider's API.
    function claimSigned(JobOffer calldata offer, bytes calldata params, bytes calldata signature)
        external
        whenNotPaused
        nonReentrant
        returns (bytes32 jobId)
    {
        if (offer.provider != address(0) && offer.provider != msg.sender) {
            revert ProviderMismatch(offer.provider, msg.sender);
        }
        uint64 deadline;
        // A wrapped sum is never stored: _post rejects maxDuration above MAX_DURATION with InvalidDuration.
        unchecked {
            deadline = uint64(block.timestamp) + offer.maxDuration;
        }
        uint32 id = registry.lock(msg.sender, offer.providerBond);
        jobId = _post(offer, params, signature, JobState.Claimed, deadline, id);
        emit JobClaimed(jobId, msg.sender, deadline);
    }

    function cancelOffer(bytes32 jobId) external {
        JobRecord storage job = _jobs[jobId];
        if (job.state != JobState.Open) revert InvalidState(jobId, job.state);
        if (msg.sender != job.requester) revert NotRequester(msg.sender);
        job.state = JobState.Cancelled;
        _credit(job.requester, job.payment);
        emit OfferCancelled(jobId);
    }

    /// @notice Revokes a signed offer that was never posted (or any future use of `nonce`).
    function invalidateNonce(uint256 nonce) external {
        _useNonce(msg.sender, nonce);
        emit NonceInvalidated(msg.sender, nonce);
    }

    function _post(
        JobOffer calldata offer,
        bytes calldata params,
        bytes calldata signature,
        JobState state,
        uint64 due,
        uint32 providerId
    ) private returns (bytes32 jobId) {
        if (offer.requester == address(0)) revert ZeroAddress();
        if (offer.expiry <= block.timestamp) revert OfferExpired(offer.expiry);
        if (offer.maxDuration == 0 || offer.maxDuration > MAX_DURATION) revert InvalidDuration(offer.maxDuration);
        if (offer.payment == 0) revert ZeroPayment();
        if (offer.payment > type(uint112).max || offer.providerBond > type(uint112).max) revert AmountTooLarge();
        bytes32 actual = keccak256(params);
        if (actual != offer.paramsHash) revert ParamsHashMismatch(offer.paramsHash, actual);
        _useNonce(offer.requester, offer.nonce);
        jobId = hashOffer(offer);
        if (!SignatureChecker.isValidSignatureNow(offer.requester, jobId, signature)) revert InvalidSignature();

        _jobs[jobId] = JobRecord({
            requester: offer.requester,
            state: state,
            due: uint40(due),
            feeBps: feeBps,
            providerId: providerId,
            payment: uint112(offer.payment),
            providerBond: uint112(offer.providerBond),
            maxDuration: uint32(offer.maxDuration)
        });
        emit OfferPosted(jobId, offer.requester, offer.provider, offer, params, signature);
        token.safeTransferFrom(offer.requester, address(this), offer.payment);
    }

    /// @dev Nonces are a bitmap (256 per storage word), so sequential nonces cost a warm write, not a new slot.
    function _useNonce(address requester, uint256 nonce) private {
        uint256 bit = 1 << (nonce & 0xff);
        uint256 word = nonceBitmap[requester][nonce >> 8];
        if (word & bit != 0) revert NonceUsed(requester, nonce);
        nonceBitmap[requester][nonce >> 8] = word | bit;
    }

    // ================================================================ provider side

    function claim(bytes32 jobId) external whenNotPaused {
        JobRecord storage job = _jobs[jobId];
        if (job.state != JobState.Open) revert InvalidState(jobId, job.state);
        if (block.timestamp >= job.due) revert OfferExpired(job.due);
        uint32 id = registry.lock(msg.sender, job.providerBond);
        uint32 addressed = job.providerId;
        if (addressed != 0 && addressed != id) revert ProviderMismatch(registry.operatorOf(addressed), msg.sender);
        uint64 deadline = uint64(block.timestamp) + job.maxDuration;
        job.providerId = id;
        job.state = JobState.Claimed;
        job.due = uint40(deadline);
        emit JobClaimed(jobId, msg.sender, deadline);
    }

    /// @notice Commits to the result (RFC 6962 Merkle root over its 4 KiB chunks) and starts the challenge
    ///         window. The size is only emitted: a verifier derives a result's size from the job's params.
    function submitResult(bytes32 jobId, bytes32 resultRoot, uint64 resultSize, string calldata resultURI) external {
        JobRecord storage job = _jobs[jobId];
        if (job.state != JobState.Claimed) revert InvalidState(jobId, job.state);
        if (registry.idOf(msg.sender) != job.providerId) revert NotProvider(msg.sender);
        if (block.timestamp > job.due) revert DeadlinePassed(job.due);
        if (resultRoot == bytes32(0) || resultSize == 0) revert EmptyResult();
        uint64 windowEnd = uint64(block.timestamp) + challengeWindow;
        job.state = JobState.Submitted;
        job.due = uint40(windowEnd);
        resultRootOf[jobId] = resultRoot;
        emit ResultSubmitted(jobId, msg.sender, resultRoot, resultSize, resultURI, windowEnd);
    }

    // ================================================================ settlement

    /// @notice The requester is satisfied: pay the provider now instead of waiting out the window.
    function accept(bytes32 jobId) external {
        JobRecord storage job = _jobs[jobId];
        if (job.state != JobState.Submitted) revert InvalidState(jobId, job.state);
        if (msg.sender != job.requester) revert NotRequester(msg.sender);
        _payProvider(jobId, job);
    }

    function finalize(bytes32 jobId) external {
        JobRecord storage job = _jobs[jobId];
        if (job.state != JobState.Submitted) revert InvalidState(jobId, job.state);
        if (block.timestamp < job.due) revert ChallengeWindowOpen(job.due);
        _payProvider(jobId, job);
    }

    /// @notice Finalizes every job in the list that is due and skips the rest, so a batch never fails because
    ///         someone else finalized one of its jobs first. Returns how many were finalized.
    function finalizeMany(bytes32[] calldata jobIds) external returns (uint256 finalized) {
        for (uint256 i = 0; i < jobIds.length; ++i) {
            JobRecord storage job = _jobs[jobIds[i]];
            if (job.state == JobState.Submitted && block.timestamp >= job.due) {
                _payProvider(jobIds[i], job);
                ++finalized;
            }
        }
    }

    /// @notice Anyone may clean up a lapsed job: an unclaimed offer past its expiry is refunded; a claimed job
    ///         past its deadline is refunded and the provider's bond goes to the requester as compensation.
    function expire(bytes32 jobId) external {
        JobRecord storage job = _jobs[jobId];
        JobState state = job.state;
        uint256 slashed;
        if (state == JobState.Open && block.timestamp >= job.due) {
            slashed = 0;
        } else if (state == JobState.Claimed && block.timestamp > job.due) {
            slashed = job.providerBond;
            _slash(jobId, job.providerId, slashed);
        } else {
            revert NotExpirable(jobId, state, job.due);
        }
        job.state = JobState.Expired;
        _credit(job.requester, uint256(job.payment) + slashed);
        emit JobExpired(jobId, job.payment, slashed);
    }

    function dispute(bytes32 jobId) external nonReentrant {
        JobRecord storage job = _jobs[jobId];
        if (job.state != JobState.Submitted) revert InvalidState(jobId, job.state);
        if (msg.sender != job.requester) revert NotRequester(msg.sender);
        if (block.timestamp >= job.due) revert ChallengeWindowClosed(job.due);
        uint256 bond = disputeBond;
        job.state = JobState.Disputed;
        disputeBondOf[jobId] = bond;
        emit JobDisputed(jobId, msg.sender, bond);
        if (bond != 0) token.safeTransferFrom(msg.sender, address(this), bond);
    }

    /// @notice The arbiter's ruling on a dispute. Provider right: paid as usual plus the requester's dispute
    ///         bond. Provider wrong: requester refunded with its dispute bond and the provider's bond.
    function resolve(bytes32 jobId, bool providerWasRight) external {
        if (msg.sender != arbiter) revert NotArbiter(msg.sender);
        JobRecord storage job = _jobs[jobId];
        if (job.state != JobState.Disputed) revert InvalidState(jobId, job.state);
        uint256 bond = disputeBondOf[jobId];
        emit DisputeResolved(jobId, providerWasRight);
        if (providerWasRight) {
            address payout = _payProvider(jobId, job);
            _credit(payout, bond);
        } else {
            job.state = JobState.Slashed;
            _slash(jobId, job.providerId, job.providerBond);
            _credit(job.requester, uint256(job.payment) + bond + job.providerBond);
        }
    }

    // ================================================================ verifier hook

    /// @notice A workload's verifier freezes a submitted job while it checks a fraud claim, so the job cannot
    ///         be finalized under it. The offer is passed whole and matched against the job id.
    function openChallenge(JobOffer calldata offer) external returns (bytes32 jobId) {
        jobId = _verifierJob(offer);
        JobRecord storage job = _jobs[jobId];
        if (job.state != JobState.Submitted) revert InvalidState(jobId, job.state);
        if (block.timestamp >= job.due) revert ChallengeWindowClosed(job.due);
        job.state = JobState.Challenged;
        emit ChallengeOpened(jobId, msg.sender);
    }

    /// @notice Ends a challenge. Fraud: the requester is refunded, half the provider's bond goes to the
    ///         challenger and the rest to the treasury (so challenging oneself never pays). No fraud: the job
    ///         returns to Submitted with its original window.
    function closeChallenge(JobOffer calldata offer, bool fraud, address challenger) external {
        bytes32 jobId = _verifierJob(offer);
        JobRecord storage job = _jobs[jobId];
        if (job.state != JobState.Challenged) revert InvalidState(jobId, job.state);
        emit ChallengeClosed(jobId, fraud, challenger);
        if (!fraud) {
            job.state = JobState.Submitted;
            return;
        }
        if (challenger == address(0)) revert ZeroAddress();
        uint256 bond = job.providerBond;
        job.state = JobState.Slashed;
        _slash(jobId, job.providerId, bond);
        _credit(job.requester, job.payment);
        _credit(challenger, bond / 2);
        _credit(treasury, bond - bond / 2);
    }

    function _verifierJob(JobOffer calldata offer) private view returns (bytes32) {
        address verifier = verifiers[offer.workload];
        if (verifier == address(0) || msg.sender != verifier) revert NotVerifier(msg.sender);
        return hashOffer(offer);
    }

    // ================================================================ money

    function withdraw() external nonReentrant {
        _withdraw(msg.sender);
    }

    function withdrawTo(address to) external nonReentrant {
        if (to == address(0)) revert ZeroAddress();
        _withdraw(to);
    }

    /// @notice Pays `account`'s whole balance out to `account` itself. Anyone may trigger it, since the money
    ///         can only go to its owner: a provider node holding just its operator key moves its earnings to
    ///         the (cold) payout address this way, which never needs to sign anything.
    function withdrawFor(address account) external nonReentrant {
        if (account == address(0)) revert ZeroAddress();
        _withdrawFrom(account, account);
    }

    function _withdraw(address to) private {
        _withdrawFrom(msg.sender, to);
    }

    function _withdrawFrom(address account, address to) private {
        uint256 amount = balanceOf[account];
        if (amount == 0) revert NothingToWithdraw();
        balanceOf[account] = 0;
        emit Withdrawn(account, to, amount);
        token.safeTransfer(to, amount);
    }

    /// @dev The JobFinalized event is the credit record here (no separate Credited event on the hot path).
    function _payProvider(bytes32 jobId, JobRecord storage job) private returns (address payout) {
        job.state = JobState.Finalized;
        uint32 providerId = job.providerId;
        uint256 payment = job.payment;
        uint256 fee = payment * job.feeBps / BPS;
        payout = registry.unlock(providerId, job.providerBond);
        balanceOf[payout] += payment - fee;
        if (fee != 0) balanceOf[treasury] += fee;
        emit JobFinalized(jobId, providerId, payout, payment - fee, fee);
    }

    /// @dev Slashed stake is moved into the market and credited from here, keeping every token the market
    ///      holds accounted for as escrow or as a withdrawable balance.
    function _slash(bytes32 jobId, uint32 providerId, uint256 amount) private {
        if (amount == 0) return;
        registry.slash(providerId, amount, address(this));
        emit ProviderSlashed(jobId, providerId, amount);
    }

    function _credit(address account, uint256 amount) private {
        if (amount == 0) return;
        balanceOf[account] += amount;
        emit Credited(account, amount);
    }

    // ================================================================ views

    /// @notice The job id of an offer: its EIP-712 digest under this market's domain.
    function hashOffer(JobOffer calldata o) public view returns (bytes32) {
        // Two halves keep the encoder off the stack limit; static words concatenate exactly like one encode.
        bytes memory head = abi.encode(OFFER_TYPEHASH, o.requester, o.provider, o.workload, o.paramsHash, o.inputHash);
        bytes memory tail =
            abi.encode(keccak256(bytes(o.inputURI)), o.payment, o.providerBond, o.maxDuration, o.expiry, o.nonce);
        return _hashTypedDataV4(keccak256(bytes.concat(head, tail)));
    }

    function getJob(bytes32 jobId) external view returns (Job memory v) {
        JobRecord storage job = _jobs[jobId];
        v.requester = job.requester;
        v.provider = job.providerId == 0 ? address(0) : registry.operatorOf(job.providerId);
        v.state = job.state;
        v.due = job.due;
        v.feeBps = job.feeBps;
        v.payment = job.payment;
        v.providerBond = job.providerBond;
        v.maxDuration = job.maxDuration;
        v.resultRoot = resultRootOf[jobId];
    }

    function isNonceUsed(address requester, uint256 nonce) external view returns (bool) {
        return nonceBitmap[requester][nonce >> 8] & (1 << (nonce & 0xff)) != 0;
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ================================================================ owner

    function setFee(uint16 feeBps_) external onlyOwner {
        _setFee(feeBps_);
    }

    function setChallengeWindow(uint64 window) external onlyOwner {
        _setChallengeWindow(window);
    }

    function setArbiter(address arbiter_) external onlyOwner {
        arbiter = arbiter_;
        emit ArbiterSet(arbiter_);
    }

    function setTreasury(address treasury_) external onlyOwner {
        _setTreasury(treasury_);
    }

    function setDisputeBond(uint256 bond) external onlyOwner {
        disputeBond = bond;
        emit DisputeBondSet(bond);
    }

    /// @notice Registers (or with address 0 removes) the fraud-proof verifier for a workload.
    function setVerifier(bytes32 workload, address verifier) external onlyOwner {
        if (verifier != address(0)) {
            bytes32 claimed = IWorkloadVerifier(verifier).workload();
            if (claimed != workload) revert VerifierWorkloadMismatch(workload, claimed);
        }
        verifiers[workload] = verifier;
        emit VerifierSet(workload, verifier);
    }

    /// @notice Stops new offers and claims. Submitting, settling, expiring and withdrawing go on, so a pause
    ///         can never trap funds or make a provider miss its deadline.
    function pause() external onlyOwner {
        _pause();
    }

    function unpause() external onlyOwner {
        _unpause();
    }

    function _setFee(uint16 feeBps_) private {
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_, MAX_FEE_BPS);
        feeBps = feeBps_;
        emit FeeSet(feeBps_);
    }

    function _setChallengeWindow(uint64 window) private {
        if (window < MIN_CHALLENGE_WINDOW || window > MAX_CHALLENGE_WINDOW) revert InvalidChallengeWindow(window);
        challengeWindow = window;
        emit ChallengeWindowSet(window);
    }

    function _setTreasury(address treasury_) private {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasurySet(treasury_);
    }
}
