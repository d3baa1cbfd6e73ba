// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MarketFixture} from "./utils/MarketFixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {MediatorSet} from "../src/MediatorSet.sol";

/// @dev A 2-of-3 panel in the market's arbiter seat, settling real disputes with real ECDSA signatures.
contract MediatorSetTest is MarketFixture {
    MediatorSet internal panel;
    uint256[3] internal keys = [uint256(0xA1), uint256(0xB2), uint256(0xC3)];
    address[] internal sorted; // the three mediators, ascending
    uint256[] internal sortedKeys;

    event MediatorsSet(address[] mediators, uint256 threshold);
    event Ruled(bytes32 indexed jobId, bool providerWasRight, address[] signers);

    function setUp() public override {
        super.setUp();
        // sort the mediators by address once, with their keys
        for (uint256 t = 0; t < 3; ++t) {
            address a = vm.addr(keys[t]);
            uint256 pos = sorted.length;
            sorted.push(a);
            sortedKeys.push(keys[t]);
            while (pos > 0 && sorted[pos - 1] > a) {
                (sorted[pos], sorted[pos - 1]) = (sorted[pos - 1], sorted[pos]);
                (sortedKeys[pos], sortedKeys[pos - 1]) = (sortedKeys[pos - 1], sortedKeys[pos]);
                --pos;
            }
        }
        panel = new MediatorSet(market, sorted, 2, owner);
        vm.prank(owner);
        market.setArbiter(address(panel));
    }

    function sig(uint256 key, bytes32 jobId, bool providerWasRight) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, panel.rulingDigest(jobId, providerWasRight));
        return abi.encodePacked(r, s, v);
    }

    function disputed() internal returns (bytes32 id) {
        (id,) = submitted(50 ether, 100 ether);
        vm.prank(requester);
        market.dispute(id);
    }

    function two(bytes32 id, bool ruling, uint256 a, uint256 b) internal view returns (bytes[] memory s) {
        s = new bytes[](2);
        s[0] = sig(sortedKeys[a], id, ruling);
        s[1] = sig(sortedKeys[b], id, ruling);
    }

    // ---------------------------------------------------------------- setup and views

    function test_constructorAndViews() public view {
        (address[] memory ms, uint256 threshold) = panel.getMediators();
        assertEq(ms.length, 3);
        assertEq(threshold, 2);
        assertEq(panel.threshold(), 2);
        for (uint256 t = 0; t < 3; ++t) {
            assertEq(ms[t], sorted[t]);
            assertTrue(panel.isMediator(sorted[t]));
        }
        assertFalse(panel.isMediator(stranger));
        assertEq(address(panel.market()), address(market));
        assertEq(panel.RULING_TYPEHASH(), keccak256("Ruling(bytes32 jobId,bool providerWasRight)"));
    }

    function test_rulingDigestIsEip712() public view {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("gpunode MediatorSet"),
                keccak256("1"),
                block.chainid,
                address(panel)
            )
        );
        assertEq(panel.domainSeparator(), domain);
        bytes32 structHash = keccak256(abi.encode(panel.RULING_TYPEHASH(), bytes32(uint256(7)), true));
        assertEq(
            panel.rulingDigest(bytes32(uint256(7)), true), keccak256(abi.encodePacked(hex"1901", domain, structHash))
        );
    }

    function test_constructorRefusesBadPanels() public {
        address[] memory none = new address[](0);
        vm.expectRevert(abi.encodeWithSelector(MediatorSet.BadThreshold.selector, 1, 0));
        new MediatorSet(market, none, 1, owner);
        vm.expectRevert(abi.encodeWithSelector(MediatorSet.ZeroAddress.selector));
        new MediatorSet(JobMarket(address(0)), sorted, 2, owner);
    }

    // ---------------------------------------------------------------- resolve

    function test_twoOfThreeRuleProviderWrong() public {
        bytes32 id = disputed();
        address[] memory signers = new address[](2);
        signers[0] = sorted[0];
        signers[1] = sorted[2];
        vm.expectEmit(address(panel));
        emit Ruled(id, false, signers);
        vm.prank(stranger); // anyone may submit the signatures
        panel.resolve(id, false, two(id, false, 0, 2));
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Slashed));
        assertEq(market.balanceOf(requester), 50 ether + 100 ether, "refund plus the provider's bond");
    }

    function test_threeOfThreeRuleProviderRight() public {
        bytes32 id = disputed();
        bytes[] memory s = new bytes[](3);
        for (uint256 t = 0; t < 3; ++t) {
            s[t] = sig(sortedKeys[t], id, true);
        }
        panel.resolve(id, true, s);
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Finalized));
        uint256 fee = uint256(50 ether) * FEE_BPS / 10_000;
        assertEq(market.balanceOf(payout), 50 ether - fee);
    }

    function test_oneSignatureIsNotEnough() public {
        bytes32 id = disputed();
        bytes[] memory s = new bytes[](1);
        s[0] = sig(sortedKeys[1], id, false);
        vm.expectRevert(abi.encodeWithSelector(MediatorSet.NotEnoughSignatures.selector, 1, 2));
        panel.resolve(id, false, s);
    }

    function test_unsortedOrRepeatedSignersAreRefused() public {
        bytes32 id = disputed();
        // signatures first: expectRevert applies to the next call, and signing calls rulingDigest
        bytes[] memory descending = two(id, false, 2, 0);
        bytes[] memory repeated = two(id, false, 1, 1);
        vm.expectRevert(MediatorSet.SignersNotAscending.selector);
        panel.resolve(id, false, descending);
        vm.expectRevert(MediatorSet.SignersNotAscending.selector);
        panel.resolve(id, false, repeated);
    }

    function test_nonMediatorIsRefused() public {
        bytes32 id = disputed();
        uint256 outsiderKey = 0xD4;
        address outsider = vm.addr(outsiderKey);
        bytes[] memory s = new bytes[](2);
        // order the pair by address so only membership can fail
        (uint256 k0, uint256 k1) = outsider < sorted[0] ? (outsiderKey, sortedKeys[0]) : (sortedKeys[0], outsiderKey);
        s[0] = sig(k0, id, false);
        s[1] = sig(k1, id, false);
        vm.expectRevert(abi.encodeWithSelector(MediatorSet.NotMediator.selector, outsider));
        panel.resolve(id, false, s);
    }

    function test_signaturesOnTheOtherRulingDoNotCount() public {
        bytes32 id = disputed();
        // signed "provider right", submitted as "provider wrong": recovers to unrelated addresses
        bytes[] memory s = two(id, true, 0, 1);
        vm.expectRevert();
        panel.resolve(id, false, s);
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Disputed));
    }

    function test_resolveOfAJobNotDisputedReverts() public {
        (bytes32 id,) = submitted(50 ether, 100 ether);
        bytes[] memory s = two(id, true, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Submitted));
        panel.resolve(id, true, s);
    }

    // ---------------------------------------------------------------- owner

    function test_setMediatorsReplacesThePanel() public {
        address[] memory next = new address[](2);
        next[0] = sorted[2];
        next[1] = address(0xBEE);
        vm.expectRevert();
        panel.setMediators(next, 1);

        vm.startPrank(owner);
        vm.expectEmit(address(panel));
        emit MediatorsSet(next, 1);
        panel.setMediators(next, 1);
        assertFalse(panel.isMediator(sorted[0]));
        assertFalse(panel.isMediator(sorted[1]));
        assertTrue(panel.isMediator(sorted[2]));
        assertTrue(panel.isMediator(address(0xBEE)));

        vm.expectRevert(abi.encodeWithSelector(MediatorSet.BadThreshold.selector, 3, 2));
        panel.setMediators(next, 3);
        vm.expectRevert(abi.encodeWithSelector(MediatorSet.BadThreshold.selector, 0, 2));
        panel.setMediators(next, 0);
        next[1] = next[0];
        vm.expectRevert(abi.encodeWithSelector(MediatorSet.DuplicateMediator.selector, next[0]));
        panel.setMediators(next, 1);
        next[1] = address(0);
        vm.expectRevert(MediatorSet.ZeroAddress.selector);
        panel.setMediators(next, 1);
        vm.stopPrank();
    }

    function test_removedMediatorNoLongerCounts() public {
        bytes32 id = disputed();
        address[] memory next = new address[](2);
        next[0] = sorted[1];
        next[1] = sorted[2];
        vm.prank(owner);
        panel.setMediators(next, 2);
        bytes[] memory removed = two(id, false, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(MediatorSet.NotMediator.selector, sorted[0]));
        panel.resolve(id, false, removed);
        panel.resolve(id, false, two(id, false, 1, 2));
        assertEq(uint8(stateOf(id)), uint8(JobMarket.JobState.Slashed));
    }

    // ---------------------------------------------------------------- fuzz

    /// @dev Any subset of at least two distinct mediators, in address order, settles; order matters.
    function testFuzz_anyTwoDistinctMediatorsSettle(uint8 a, uint8 b, bool ruling) public {
        uint256 x = uint256(a) % 3;
        uint256 y = uint256(b) % 3;
        vm.assume(x != y);
        (x, y) = x < y ? (x, y) : (y, x);
        bytes32 id = disputed();
        panel.resolve(id, ruling, two(id, ruling, x, y));
        assertEq(uint8(stateOf(id)), uint8(ruling ? JobMarket.JobState.Finalized : JobMarket.JobState.Slashed));
    }

    function test_gas_resolveTwoOfThree() public {
        bytes32 id = disputed();
        bytes[] memory s = two(id, false, 0, 1);
        uint256 before = gasleft();
        panel.resolve(id, false, s);
        emit log_named_uint("MediatorSet.resolve 2-of-3 execution gas", before - gasleft());
    }
}
