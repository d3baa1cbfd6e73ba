// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "./Test.sol";
import {GpuToken} from "../../src/GpuToken.sol";
import {ProviderRegistry} from "../../src/ProviderRegistry.sol";
import {JobMarket} from "../../src/JobMarket.sol";

/// @dev A deployed protocol with a funded requester and a registered, staked provider.
abstract contract MarketFixture is Test {
    GpuToken internal token;
    ProviderRegistry internal registry;
    JobMarket internal market;

    address internal owner = address(0xA11CE);
    address internal treasury = address(0x7EA5);
    address internal arbiter = address(0xA4B1);

    uint256 internal requesterKey = 0xBEEF;
    address internal requester;
    address internal provider = address(0x9123);
    address internal payout = address(0x9A70);
    address internal stranger = address(0x5757);

    uint16 internal constant FEE_BPS = 250;
    uint64 internal constant WINDOW = 1 hours;
    uint64 internal constant UNBONDING = 7 days;
    uint256 internal constant STAKE = 1_000 ether;
    bytes32 internal constant WORKLOAD = keccak256("matmul-int8/v1");

    bytes internal params = hex"0102030405";
    uint256 internal nextNonce;

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        requester = vm.addr(requesterKey);
        vm.startPrank(owner);
        token = new GpuToken(owner);
        registry = new ProviderRegistry(token, UNBONDING, owner);
        market = new JobMarket(registry, treasury, FEE_BPS, WINDOW, arbiter, owner);
        registry.setMarket(address(market));
        token.mint(requester, 1_000_000 ether);
        token.mint(provider, 10_000 ether);
        vm.stopPrank();

        vm.prank(requester);
        token.approve(address(market), type(uint256).max);
        registerProvider(provider, payout, STAKE);
    }

    function registerProvider(address operator, address payTo, uint256 amount) internal {
        ProviderRegistry.Capacity memory cap = ProviderRegistry.Capacity({
            gpuModel: "NVIDIA H100 80GB HBM3",
            deviceCount: 1,
            vramMiB: 81_559,
            int8TopsMilli: 1_500_000,
            bf16TflopsMilli: 700_000,
            benchmarkHash: keccak256("bench")
        });
        vm.startPrank(operator);
        registry.register(payTo, cap, 1e12, "https://node.example:8600", "ipfs://meta");
        if (amount != 0) {
            token.approve(address(registry), amount);
            registry.stake(amount);
        }
        vm.stopPrank();
    }

    function makeOffer(uint256 payment, uint256 bond) internal returns (JobMarket.JobOffer memory o) {
        o = JobMarket.JobOffer({
            requester: requester,
            provider: address(0),
            workload: WORKLOAD,
            paramsHash: keccak256(params),
            inputHash: keccak256("input"),
            inputURI: "https://data.example/input.safetensors",
            payment: payment,
            providerBond: bond,
            maxDuration: 1 hours,
            expiry: uint64(block.timestamp + 1 days),
            nonce: nextNonce++
        });
    }

    function sign(uint256 key, JobMarket.JobOffer memory o) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, market.hashOffer(o));
        return abi.encodePacked(r, s, v);
    }

    function post(JobMarket.JobOffer memory o) internal returns (bytes32) {
        return market.postOffer(o, params, sign(requesterKey, o));
    }

    function postAndClaim(uint256 payment, uint256 bond) internal returns (bytes32 id, JobMarket.JobOffer memory o) {
        o = makeOffer(payment, bond);
        id = post(o);
        vm.prank(provider);
        market.claim(id);
    }

    function submitted(uint256 payment, uint256 bond) internal returns (bytes32 id, JobMarket.JobOffer memory o) {
        (id, o) = postAndClaim(payment, bond);
        vm.prank(provider);
        market.submitResult(id, keccak256("root"), 4096, "https://node.example:8600/results/x");
    }

    function stateOf(bytes32 id) internal view returns (JobMarket.JobState) {
        return market.getJob(id).state;
    }
}
