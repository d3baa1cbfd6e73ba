// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

import {JobMarket} from "./JobMarket.sol";

/// @title MediatorSet
/// @notice An M-of-N panel that takes the market's arbiter seat: a dispute is settled only by a threshold of
///         mediators' EIP-712 signatures over the same ruling, so no single key decides float work, whose
///         results can only be checked within a tolerance. Anyone may submit the collected signatures.
contract MediatorSet is EIP712, Ownable2Step {
    bytes32 public constant RULING_TYPEHASH = keccak256("Ruling(bytes32 jobId,bool providerWasRight)");

    JobMarket public immutable market;
    address[] private _mediators;
    mapping(address mediator => bool) public isMediator;
    uint256 public threshold;

    event MediatorsSet(address[] mediators, uint256 threshold);
    event Ruled(bytes32 indexed jobId, bool providerWasRight, address[] signers);

    error ZeroAddress();
    error BadThreshold(uint256 threshold, uint256 count);
    error DuplicateMediator(address mediator);
    error NotMediator(address signer);
    error SignersNotAscending();
    error NotEnoughSignatures(uint256 have, uint256 need);

    constructor(JobMarket market_, address[] memory mediators_, uint256 threshold_, address initialOwner)
        EIP712("gpunode MediatorSet", "1")
        Ownable(initialOwner)
    {
        if (address(market_) == address(0)) revert ZeroAddress();
        market = market_;
        _setMediators(mediators_, threshold_);
    }

    /// @notice Replaces the whole panel. Signatures already collected count only if their signers are still in it.
    function setMediators(address[] calldata mediators_, uint256 threshold_) external onlyOwner {
        _setMediators(mediators_, threshold_);
    }

    function getMediators() external view returns (address[] memory, uint256) {
        return (_mediators, threshold);
    }

    /// @notice What each mediator signs (EIP-712 under this contract's domain).
    function rulingDigest(bytes32 jobId, bool providerWasRight) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(RULING_TYPEHASH, jobId, providerWasRight)));
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice Settles a disputed job with at least `threshold` mediator signatures on the same ruling,
    ///         ordered by signer address (strictly ascending, which also makes them distinct).
    function resolve(bytes32 jobId, bool providerWasRight, bytes[] calldata signatures) external {
        uint256 need = threshold;
        if (signatures.length < need) revert NotEnoughSignatures(signatures.length, need);
        bytes32 digest = rulingDigest(jobId, providerWasRight);
        address[] memory signers = new address[](signatures.length);
        address last;
        for (uint256 i = 0; i < signatures.length; ++i) {
            address signer = ECDSA.recover(digest, signatures[i]);
            if (signer <= last) revert SignersNotAscending();
            if (!isMediator[signer]) revert NotMediator(signer);
            signers[i] = signer;
            last = signer;
        }
        emit Ruled(jobId, providerWasRight, signers);
        market.resolve(jobId, providerWasRight);
    }

    function _setMediators(address[] memory mediators_, uint256 threshold_) private {
        if (threshold_ == 0 || threshold_ > mediators_.length) revert BadThreshold(threshold_, mediators_.length);
        for (uint256 i = 0; i < _mediators.length; ++i) {
            isMediator[_mediators[i]] = false;
        }
        delete _mediators;
        for (uint256 i = 0; i < mediators_.length; ++i) {
            address m = mediators_[i];
            if (m == address(0)) revert ZeroAddress();
            if (isMediator[m]) revert DuplicateMediator(m);
            isMediator[m] = true;
            _mediators.push(m);
        }
        threshold = threshold_;
        emit MediatorsSet(mediators_, threshold_);
    }
}
