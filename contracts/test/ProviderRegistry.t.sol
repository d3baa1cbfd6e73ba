// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MarketFixture} from "./utils/MarketFixture.sol";
import {ProviderRegistry} from "../src/ProviderRegistry.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

contract ProviderRegistryTest is MarketFixture {
    address internal op2 = address(0x0202);
    address internal pay2 = address(0x0203);

    function cap() internal pure returns (ProviderRegistry.Capacity memory) {
        return ProviderRegistry.Capacity("NVIDIA L4", 2, 23_034, 485_000, 121_000, keccak256("evidence"));
    }

    function test_register_storesRecordAndEmits() public {
        vm.expectEmit(address(registry));
        emit ProviderRegistry.ProviderRegistered(op2, 2, pay2, cap(), 5, "https://p2", "ipfs://m2");
        vm.prank(op2);
        registry.register(pay2, cap(), 5, "https://p2", "ipfs://m2");
        ProviderRegistry.Provider memory p = registry.getProvider(op2);
        assertTrue(p.active, "active");
        assertEq(p.payout, pay2, "payout");
        assertEq(p.priceFloorPerGpuSecond, 5, "price floor");
        assertEq(p.endpoint, "https://p2", "endpoint");
        assertEq(p.metadataURI, "ipfs://m2", "metadata");
        assertEq(p.capacity.gpuModel, "NVIDIA L4", "model");
        assertEq(p.capacity.deviceCount, 2, "devices");
        assertEq(p.capacity.vramMiB, 23_034, "vram");
        assertEq(p.capacity.int8TopsMilli, 485_000, "int8");
        assertEq(p.capacity.bf16TflopsMilli, 121_000, "bf16");
        assertEq(p.capacity.benchmarkHash, keccak256("evidence"), "evidence");
        assertTrue(registry.isActive(op2), "isActive");
        assertEq(registry.idOf(op2), 2, "second provider gets id 2");
        assertEq(registry.operatorOf(2), op2, "id maps back to the operator");
        assertEq(registry.providerCount(), 2, "count");
        assertEq(registry.payoutOf(op2), pay2, "payoutOf");
    }

    function test_register_reverts() public {
        vm.startPrank(op2);
        vm.expectRevert(ProviderRegistry.ZeroAddress.selector);
        registry.register(address(0), cap(), 0, "", "");
        vm.expectRevert(ProviderRegistry.PayoutIsOperator.selector);
        registry.register(op2, cap(), 0, "", "");
        registry.register(pay2, cap(), 0, "", "");
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.AlreadyRegistered.selector, op2));
        registry.register(pay2, cap(), 0, "", "");
        vm.stopPrank();
    }

    function test_update_changesRecord() public {
        vm.prank(op2);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.NotRegistered.selector, op2));
        registry.update(pay2, cap(), 0, "", "");
        vm.startPrank(provider);
        vm.expectEmit(address(registry));
        emit ProviderRegistry.ProviderUpdated(provider, pay2, cap(), 9, "https://new", "");
        registry.update(pay2, cap(), 9, "https://new", "");
        vm.expectRevert(ProviderRegistry.PayoutIsOperator.selector);
        registry.update(provider, cap(), 9, "https://new", "");
        vm.stopPrank();
        assertEq(registry.payoutOf(provider), pay2, "payout changed");
        assertEq(registry.getProvider(provider).stake, STAKE, "stake kept");
    }

    function test_deregister_onlyWithoutLockedStake() public {
        bytes32 id = post(makeOffer(1 ether, 1 ether));
        vm.prank(provider);
        market.claim(id);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.StakeStillLocked.selector, 1 ether));
        registry.deregister();
        vm.startPrank(provider);
        market.submitResult(id, keccak256("r"), 1, "");
        vm.warp(block.timestamp + WINDOW);
        market.finalize(id);
        vm.expectEmit(address(registry));
        emit ProviderRegistry.ProviderDeregistered(provider);
        registry.deregister();
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.NotRegistered.selector, provider));
        registry.deregister();
        vm.stopPrank();
        assertFalse(registry.isActive(provider), "inactive");
        // An inactive provider cannot claim, and cannot stake more.
        bytes32 id2 = post(makeOffer(1 ether, 0));
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.NotRegistered.selector, provider));
        market.claim(id2);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.NotRegistered.selector, provider));
        registry.stake(1);
        // Re-registering brings the old stake back into use.
        vm.prank(provider);
        registry.register(payout, cap(), 0, "", "");
        assertEq(registry.freeStake(provider), STAKE, "stake survived deregistration");
    }

    function test_stake_reverts() public {
        vm.prank(provider);
        vm.expectRevert(ProviderRegistry.ZeroAmount.selector);
        registry.stake(0);
        vm.prank(op2);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.NotRegistered.selector, op2));
        registry.stake(1);
    }

    function test_stake_overflowGuard() public {
        vm.prank(owner);
        token.mint(provider, uint256(type(uint128).max));
        vm.startPrank(provider);
        token.approve(address(registry), type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.AmountTooLarge.selector, uint256(type(uint120).max)));
        registry.stake(uint256(type(uint120).max));
        vm.stopPrank();
    }

    function test_unstake_afterDelayToPayout() public {
        vm.startPrank(provider);
        vm.expectEmit(address(registry));
        emit ProviderRegistry.UnstakeRequested(provider, 400 ether, uint64(block.timestamp + UNBONDING));
        registry.requestUnstake(400 ether);
        assertEq(registry.freeStake(provider), STAKE - 400 ether, "unbonding is not free");
        vm.expectRevert(
            abi.encodeWithSelector(ProviderRegistry.UnbondingNotReady.selector, uint64(block.timestamp + UNBONDING))
        );
        registry.withdrawStake();
        vm.warp(block.timestamp + UNBONDING);
        registry.withdrawStake();
        vm.expectRevert(ProviderRegistry.NothingUnbonding.selector);
        registry.withdrawStake();
        vm.stopPrank();
        assertEq(token.balanceOf(payout), 400 ether, "paid to the payout address");
        assertEq(registry.getProvider(provider).stake, STAKE - 400 ether, "stake reduced");
    }

    function test_unstake_requestRestartsDelay() public {
        vm.startPrank(provider);
        registry.requestUnstake(1 ether);
        vm.warp(block.timestamp + UNBONDING - 1);
        registry.requestUnstake(1 ether);
        vm.warp(block.timestamp + 1);
        vm.expectRevert();
        registry.withdrawStake();
        vm.warp(block.timestamp + UNBONDING);
        registry.withdrawStake();
        vm.stopPrank();
        assertEq(token.balanceOf(payout), 2 ether, "both requests paid together");
    }

    function test_unstake_reverts() public {
        vm.startPrank(provider);
        vm.expectRevert(ProviderRegistry.ZeroAmount.selector);
        registry.requestUnstake(0);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.InsufficientFreeStake.selector, STAKE + 1, STAKE));
        registry.requestUnstake(STAKE + 1);
        vm.stopPrank();
        // Locked stake cannot be unstaked.
        bytes32 id = post(makeOffer(1 ether, 600 ether));
        vm.prank(provider);
        market.claim(id);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.InsufficientFreeStake.selector, 500 ether, 400 ether));
        registry.requestUnstake(500 ether);
    }

    function test_marketHooks_onlyMarket() public {
        bytes memory err = abi.encodeWithSelector(ProviderRegistry.NotMarket.selector, stranger);
        vm.startPrank(stranger);
        vm.expectRevert(err);
        registry.lock(provider, 1);
        vm.expectRevert(err);
        registry.unlock(1, 1);
        vm.expectRevert(err);
        registry.slash(1, 1, stranger);
        vm.stopPrank();
    }

    function test_marketHooks_bounds() public {
        uint32 id = registry.idOf(provider);
        vm.startPrank(address(market));
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.InsufficientLockedStake.selector, 1, 0));
        registry.unlock(id, 1);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.InsufficientLockedStake.selector, 1, 0));
        registry.slash(id, 1, address(market));
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.UnknownProvider.selector, uint32(0)));
        registry.unlock(0, 0);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.UnknownProvider.selector, uint32(9)));
        registry.unlock(9, 0);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.NotRegistered.selector, stranger));
        registry.lock(stranger, 0);
        assertEq(registry.lock(provider, 10), id, "lock returns the provider id");
        registry.slash(id, 4, stranger);
        assertEq(registry.unlock(id, 6), payout, "unlock returns the payout address");
        // Zero amounts are no-ops (bond-free jobs).
        registry.unlock(id, 0);
        registry.slash(id, 0, stranger);
        vm.stopPrank();
        assertEq(token.balanceOf(stranger), 4, "slashed stake sent");
        assertEq(registry.getProvider(provider).locked, 0, "nothing locked");
        assertEq(registry.getProvider(provider).stake, STAKE - 4, "stake reduced");
    }

    function test_setMarket_onceAndOnlyOwner() public {
        ProviderRegistry r = new ProviderRegistry(IERC20(address(token)), 1, owner);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        r.setMarket(address(1));
        vm.startPrank(owner);
        vm.expectRevert(ProviderRegistry.ZeroAddress.selector);
        r.setMarket(address(0));
        r.setMarket(address(1));
        vm.expectRevert(ProviderRegistry.MarketAlreadySet.selector);
        r.setMarket(address(2));
        vm.stopPrank();
        vm.expectRevert(ProviderRegistry.ZeroAddress.selector);
        new ProviderRegistry(IERC20(address(0)), 1, owner);
    }

    function testFuzz_stakeAccounting(uint256 amount, uint256 lockAmt, uint256 unbond) public {
        amount = bound(amount, 1, 10_000 ether);
        vm.prank(owner);
        token.mint(op2, amount);
        vm.startPrank(op2);
        registry.register(pay2, cap(), 0, "", "");
        token.approve(address(registry), amount);
        registry.stake(amount);
        vm.stopPrank();
        lockAmt = bound(lockAmt, 0, amount);
        vm.prank(address(market));
        registry.lock(op2, lockAmt);
        unbond = bound(unbond, 1, amount);
        vm.prank(op2);
        if (unbond > amount - lockAmt) {
            vm.expectRevert(
                abi.encodeWithSelector(ProviderRegistry.InsufficientFreeStake.selector, unbond, amount - lockAmt)
            );
            registry.requestUnstake(unbond);
        } else {
            registry.requestUnstake(unbond);
            assertEq(registry.freeStake(op2), amount - lockAmt - unbond, "free = stake - locked - unbonding");
        }
    }
}
