// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IWorkloadVerifier
/// @notice A contract that can prove, on-chain and without an arbiter, that a provider's committed result
///         for one workload is wrong. The market owner registers one verifier per workload id; the verifier
///         then drives JobMarket.openChallenge / JobMarket.closeChallenge for jobs of that workload.
interface IWorkloadVerifier {
    /// @notice The workload id (keccak256("name/version")) this verifier checks. The market refuses to
    ///         register a verifier under a workload it does not claim, which catches mis-wiring.
    function workload() external view returns (bytes32);
}
