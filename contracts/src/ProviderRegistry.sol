// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

/// @title ProviderRegistry
/// @notice Who the providers are, what they claim to run, and the stake that backs their bonds.
/// @dev A provider is identified by its operator address (the node's hot key). Money that leaves the
///      registry for a provider goes to its payout address, which should be a cold wallet. Stake is split
///      into free, locked (bonds of claimed jobs, only the market may lock/unlock/slash it) and unbonding
///      (requested out, withdrawable after `unbondingDelay`, no longer usable for bonds). Records live under
///      compact ids; id 0 is never assigned, so an unknown operator maps to an empty, inactive record.
contract ProviderRegistry is Ownable2Step {
    using SafeERC20 for IERC20;

    struct Capacity {
        string gpuModel; // e.g. "NVIDIA H100 80GB HBM3", or "cpu" for a CPU-only node
        uint32 deviceCount;
        uint32 vramMiB; // per device
        uint64 int8TopsMilli; // measured int8 TOPS x 1000
        uint64 bf16TflopsMilli; // measured bf16 TFLOPS x 1000
        bytes32 benchmarkHash; // hash of the capacity attestation (benchmark evidence)
    }

    /// @dev Slot 0 holds everything a claim or a settlement touches, so each costs one storage read.
    struct Provider {
        uint120 stake; // bonded stake: free + locked (unbonding stake has already left this figure)
        uint120 locked; // bonds of claimed jobs
        bool active;
        address payout;
        uint64 unbondingReadyAt;
        uint128 unbonding; // requested out, not yet withdrawn
        address operator;
        uint256 priceFloorPerGpuSecond; // token base units per GPU-second
        string endpoint; // API endpoint URL for direct offers and result downloads
        string metadataURI;
        Capacity capacity;
    }

    IERC20 public immutable token;
    uint64 public immutable unbondingDelay;
    address public market;

    /// @notice Compact provider ids (1, 2, ...) let the market keep a job's provider in 32 bits.
    mapping(address operator => uint32) public idOf;
    mapping(uint32 id => Provider) private _providers;
    uint32 public providerCount;

    event MarketSet(address indexed market);
    event ProviderRegistered(
        address indexed operator,
        uint32 indexed id,
        address payout,
        Capacity capacity,
        uint256 priceFloorPerGpuSecond,
        string endpoint,
        string metadataURI
    );
    event ProviderUpdated(
        address indexed operator,
        address indexed payout,
        Capacity capacity,
        uint256 priceFloorPerGpuSecond,
        string endpoint,
        string metadataURI
    );
    event ProviderDeregistered(address indexed operator);
    event Staked(address indexed operator, address indexed from, uint256 amount);
    event UnstakeRequested(address indexed operator, uint256 amount, uint64 readyAt);
    event StakeWithdrawn(address indexed operator, address indexed to, uint256 amount);
    // Bond movements name the provider by id (see ProviderRegistered) to keep claims and settlements cheap.
    event StakeLocked(uint32 indexed id, uint256 amount);
    event StakeUnlocked(uint32 indexed id, uint256 amount);
    event StakeSlashed(uint32 indexed id, uint256 amount, address indexed to);

    error ZeroAddress();
    error MarketAlreadySet();
    error NotMarket(address caller);
    error AlreadyRegistered(address operator);
    error NotRegistered(address operator);
    error PayoutIsOperator();
    error ZeroAmount();
    error AmountTooLarge(uint256 amount);
    error InsufficientFreeStake(uint256 requested, uint256 available);
    error InsufficientLockedStake(uint256 requested, uint256 locked);
    error StakeStillLocked(uint256 locked);
    error NothingUnbonding();
    error UnknownProvider(uint32 id);
    error UnbondingNotReady(uint64 readyAt);

    modifier onlyMarket() {
        if (msg.sender != market) revert NotMarket(msg.sender);
        _;
    }

    constructor(IERC20 token_, uint64 unbondingDelay_, address initialOwner) Ownable(initialOwner) {
        if (address(token_) == address(0)) revert ZeroAddress();
        token = token_;
        unbondingDelay = unbondingDelay_;
    }

    /// @notice Wires the market once. Set-once so an owner can never swap in a market that could drain stake.
    function setMarket(address market_) external onlyOwner {
        if (market_ == address(0)) revert ZeroAddress();
        if (market != address(0)) revert MarketAlreadySet();
        market = market_;
        emit MarketSet(market_);
    }

    // ---------------------------------------------------------------- provider records

    function register(
        address payout,
        Capacity calldata capacity,
        uint256 priceFloorPerGpuSecond,
        string calldata endpoint,
        string calldata metadataURI
    ) external {
        uint32 id = idOf[msg.sender];
        if (id == 0) {
            id = ++providerCount;
            idOf[msg.sender] = id;
            _providers[id].operator = msg.sender;
        }
        Provider storage p = _providers[id];
        if (p.active) revert AlreadyRegistered(msg.sender);
        _setRecord(p, payout, capacity, priceFloorPerGpuSecond, endpoint, metadataURI);
        p.active = true;
        emit ProviderRegistered(msg.sender, id, payout, capacity, priceFloorPerGpuSecond, endpoint, metadataURI);
    }

    function update(
        address payout,
        Capacity calldata capacity,
        uint256 priceFloorPerGpuSecond,
        string calldata endpoint,
        string calldata metadataURI
    ) external {
        Provider storage p = _providers[idOf[msg.sender]];
        if (!p.active) revert NotRegistered(msg.sender);
        _setRecord(p, payout, capacity, priceFloorPerGpuSecond, endpoint, metadataURI);
        emit ProviderUpdated(msg.sender, payout, capacity, priceFloorPerGpuSecond, endpoint, metadataURI);
    }

    /// @notice Stops new claims. Requires no locked bonds so an open job can never lose its backing stake;
    ///         remaining stake is taken out through requestUnstake / withdrawStake as usual.
    function deregister() external {
        Provider storage p = _providers[idOf[msg.sender]];
        if (!p.active) revert NotRegistered(msg.sender);
        if (p.locked != 0) revert StakeStillLocked(p.locked);
        p.active = false;
        emit ProviderDeregistered(msg.sender);
    }

    function _setRecord(
        Provider storage p,
        address payout,
        Capacity calldata capacity,
        uint256 priceFloorPerGpuSecond,
        string calldata endpoint,
        string calldata metadataURI
    ) private {
        if (payout == address(0)) revert ZeroAddress();
        if (payout == msg.sender) revert PayoutIsOperator();
        p.payout = payout;
        p.priceFloorPerGpuSecond = priceFloorPerGpuSecond;
        p.endpoint = endpoint;
        p.metadataURI = metadataURI;
        p.capacity = capacity;
    }

    // ---------------------------------------------------------------- stake

    /// @notice Adds stake for the caller's provider record (tokens pulled from the caller).
    function stake(uint256 amount) external {
        Provider storage p = _providers[idOf[msg.sender]];
        if (!p.active) revert NotRegistered(msg.sender);
        if (amount == 0) revert ZeroAmount();
        uint256 total = uint256(p.stake) + amount;
        if (total > type(uint120).max) revert AmountTooLarge(amount);
        p.stake = uint120(total);
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Staked(msg.sender, msg.sender, amount);
    }

    /// @notice Moves free stake into unbonding. Each request restarts the delay for the whole unbonding
    ///         amount, so stake cannot be rotated out faster than the delay by splitting requests.
    function requestUnstake(uint256 amount) external {
        Provider storage p = _providers[idOf[msg.sender]];
        if (amount == 0) revert ZeroAmount();
        uint256 free = _free(p);
        if (amount > free) revert InsufficientFreeStake(amount, free);
        p.stake -= uint120(amount);
        p.unbonding += uint128(amount);
        uint64 readyAt = uint64(block.timestamp) + unbondingDelay;
        p.unbondingReadyAt = readyAt;
        emit UnstakeRequested(msg.sender, amount, readyAt);
    }

    /// @notice Pays unbonded stake out to the payout address once the delay has passed.
    function withdrawStake() external {
        Provider storage p = _providers[idOf[msg.sender]];
        uint256 amount = p.unbonding;
        if (amount == 0) revert NothingUnbonding();
        if (block.timestamp < p.unbondingReadyAt) revert UnbondingNotReady(p.unbondingReadyAt);
        p.unbonding = 0;
        address to = p.payout;
        token.safeTransfer(to, amount);
        emit StakeWithdrawn(msg.sender, to, amount);
    }

    // ---------------------------------------------------------------- market hooks

    /// @notice Locks a bond for a claim and returns the provider's id, which the market stores instead of
    ///         the operator address.
    function lock(address operator, uint256 amount) external onlyMarket returns (uint32 id) {
        id = idOf[operator];
        Provider storage p = _providers[id];
        if (!p.active) revert NotRegistered(operator);
        if (amount == 0) return id;
        uint256 free = _free(p);
        if (amount > free) revert InsufficientFreeStake(amount, free);
        p.locked += uint120(amount);
        emit StakeLocked(id, amount);
    }

    /// @notice Releases a settled job's bond and returns where the provider's earnings go.
    function unlock(uint32 id, uint256 amount) external onlyMarket returns (address payout) {
        if (id == 0 || id > providerCount) revert UnknownProvider(id);
        Provider storage p = _providers[id];
        if (amount != 0) {
            if (amount > p.locked) revert InsufficientLockedStake(amount, p.locked);
            p.locked -= uint120(amount);
            emit StakeUnlocked(id, amount);
        }
        return p.payout;
    }

    /// @notice Takes locked stake away from a provider and sends it to `to` (the market, which credits the
    ///         injured parties). Only locked stake can be slashed: a bond is the most a job can cost.
    function slash(uint32 id, uint256 amount, address to) external onlyMarket {
        if (amount == 0) return;
        Provider storage p = _providers[id];
        if (amount > p.locked) revert InsufficientLockedStake(amount, p.locked);
        p.locked -= uint120(amount);
        p.stake -= uint120(amount);
        token.safeTransfer(to, amount);
        emit StakeSlashed(id, amount, to);
    }

    // ---------------------------------------------------------------- views

    function getProvider(address operator) external view returns (Provider memory) {
        return _providers[idOf[operator]];
    }

    function isActive(address operator) external view returns (bool) {
        return _providers[idOf[operator]].active;
    }

    function payoutOf(address operator) external view returns (address) {
        return _providers[idOf[operator]].payout;
    }

    function operatorOf(uint32 id) external view returns (address) {
        return _providers[id].operator;
    }

    /// @notice Stake that can back new bonds (neither locked nor unbonding).
    function freeStake(address operator) external view returns (uint256) {
        return _free(_providers[idOf[operator]]);
    }

    function _free(Provider storage p) private view returns (uint256) {
        return uint256(p.stake) - p.locked;
    }
}
