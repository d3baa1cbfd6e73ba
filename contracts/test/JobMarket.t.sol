// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MarketFixture} from "./utils/MarketFixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {ProviderRegistry} from "../src/ProviderRegistry.sol";
import {IWorkloadVerifier} from "../src/IWorkloadVerifier.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @dev A contract wallet (EIP-1271) owned by one key, to show requesters need not be EOAs.
contract SmartWallet is IERC1271 {
    address public immutable signer;

    constructor(address signer_) {
        signer = signer_;
    }

    function approve(IERC20 token, address spender) external {
        token.approve(spender, type(uint256).max);
    }

    function isValidSignature(bytes32 hash, bytes calldata sig) external view returns (bytes4) {
        (address got,,) = ECDSA.tryRecover(hash, sig);
        return got == signer ? IERC1271.isValidSignature.selector : bytes4(0xffffffff);
    }
}

contract MockVerifier is IWorkloadVerifier {
    bytes32 public immutable workload;

    constructor(bytes32 w) {
        workload = w;
    }
}

contract JobMarketTest is MarketFixture {
    uint256 constant PAY = 100 ether;
    uint256 constant BOND = 10 ether;

    // ------------------------------------------------------------ post

    function test_post_escrowsPaymentAndEmitsFullOffer() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(requesterKey, o);
        bytes32 expectedId = market.hashOffer(o);
        uint256 before = token.balanceOf(requester);
        vm.expectEmit(address(market));
        emit JobMarket.OfferPosted(expectedId, requester, address(0), o, params, sig);
        vm.prank(stranger); // a relayer posts for the requester
        bytes32 id = market.postOffer(o, params, sig);
        assertEq(id, expectedId, "job id is the EIP-712 digest");
        assertEq(token.balanceOf(requester), before - PAY, "payment pulled from requester");
        assertEq(token.balanceOf(address(market)), PAY, "payment escrowed");
        JobMarket.Job memory j = market.getJob(id);
        assertTrue(j.state == JobMarket.JobState.Open, "open");
        assertEq(j.due, o.expiry, "due is expiry while open");
        assertEq(j.payment, PAY, "payment stored");
        assertEq(j.feeBps, FEE_BPS, "fee snapshot");
        assertTrue(market.isNonceUsed(requester, o.nonce), "nonce consumed");
    }

    function test_post_revertsWhenExpired() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.expiry = uint64(block.timestamp);
        bytes memory sig = sign(requesterKey, o);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.OfferExpired.selector, o.expiry));
        market.postOffer(o, params, sig);
    }

    function test_post_revertsOnBadDuration() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.maxDuration = 0;
        bytes memory sig = sign(requesterKey, o);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidDuration.selector, uint64(0)));
        market.postOffer(o, params, sig);
        o.maxDuration = market.MAX_DURATION() + 1;
        sig = sign(requesterKey, o);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidDuration.selector, o.maxDuration));
        market.postOffer(o, params, sig);
    }

    function test_post_revertsOnZeroPayment() public {
        JobMarket.JobOffer memory o = makeOffer(0, BOND);
        bytes memory sig = sign(requesterKey, o);
        vm.expectRevert(JobMarket.ZeroPayment.selector);
        market.postOffer(o, params, sig);
    }

    function test_post_revertsOnAmountsAboveUint112() public {
        JobMarket.JobOffer memory o = makeOffer(uint256(type(uint112).max) + 1, BOND);
        bytes memory sig = sign(requesterKey, o);
        vm.expectRevert(JobMarket.AmountTooLarge.selector);
        market.postOffer(o, params, sig);
        o = makeOffer(PAY, uint256(type(uint112).max) + 1);
        sig = sign(requesterKey, o);
        vm.expectRevert(JobMarket.AmountTooLarge.selector);
        market.postOffer(o, params, sig);
    }

    function test_post_revertsOnParamsMismatch() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(requesterKey, o);
        bytes memory other = hex"ff";
        vm.expectRevert(abi.encodeWithSelector(JobMarket.ParamsHashMismatch.selector, o.paramsHash, keccak256(other)));
        market.postOffer(o, other, sig);
    }

    function test_post_revertsOnReplay() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(requesterKey, o);
        market.postOffer(o, params, sig);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NonceUsed.selector, requester, o.nonce));
        market.postOffer(o, params, sig);
    }

    function test_post_revertsOnForeignSignature() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(0xBAD, o);
        vm.expectRevert(JobMarket.InvalidSignature.selector);
        market.postOffer(o, params, sig);
    }

    function test_post_revertsOnMalformedSignature() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        vm.expectRevert(JobMarket.InvalidSignature.selector);
        market.postOffer(o, params, hex"1234");
    }

    function test_post_revertsOnTamperedField() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(requesterKey, o);
        o.payment = PAY - 1;
        vm.expectRevert(JobMarket.InvalidSignature.selector);
        market.postOffer(o, params, sig);
    }

    function test_post_revertsOnZeroRequester() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.requester = address(0);
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        market.postOffer(o, params, hex"");
    }

    function test_post_revertsWithoutAllowance() public {
        vm.prank(requester);
        token.approve(address(market), 0);
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(requesterKey, o);
        vm.expectRevert();
        market.postOffer(o, params, sig);
    }

    function test_post_acceptsContractWalletSignature() public {
        SmartWallet wallet = new SmartWallet(vm.addr(0xC0FFEE));
        vm.prank(owner);
        token.mint(address(wallet), PAY);
        wallet.approve(token, address(market));
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.requester = address(wallet);
        bytes32 id = market.postOffer(o, params, sign(0xC0FFEE, o));
        assertTrue(stateOf(id) == JobMarket.JobState.Open, "posted by EIP-1271 wallet");
        o.nonce = 99;
        bytes memory wrong = sign(0xBAD, o);
        vm.expectRevert(JobMarket.InvalidSignature.selector);
        market.postOffer(o, params, wrong);
    }

    function test_post_revertsForUnregisteredAddressedProvider() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.provider = stranger;
        bytes memory sig = sign(requesterKey, o);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.UnknownProvider.selector, stranger));
        market.postOffer(o, params, sig);
    }

    function test_post_farExpiryIsClamped() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.expiry = type(uint64).max;
        bytes32 id = post(o);
        assertEq(market.getJob(id).due, type(uint40).max, "due clamped to uint40");
        vm.prank(provider);
        market.claim(id);
    }

    function test_post_revertsWhenPaused() public {
        vm.prank(owner);
        market.pause();
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(requesterKey, o);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        market.postOffer(o, params, sig);
    }

    // ------------------------------------------------------------ cancel / nonce

    function test_cancel_refundsRequester() public {
        bytes32 id = post(makeOffer(PAY, BOND));
        vm.prank(requester);
        market.cancelOffer(id);
        assertTrue(stateOf(id) == JobMarket.JobState.Cancelled, "cancelled");
        assertEq(market.balanceOf(requester), PAY, "refund credited");
    }

    function test_cancel_revertsForOthersAndAfterClaim() public {
        bytes32 id = post(makeOffer(PAY, BOND));
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotRequester.selector, stranger));
        market.cancelOffer(id);
        vm.prank(provider);
        market.claim(id);
        vm.prank(requester);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Claimed));
        market.cancelOffer(id);
    }

    function test_invalidateNonce_revokesUnpostedOffer() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(requesterKey, o);
        vm.prank(requester);
        market.invalidateNonce(o.nonce);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NonceUsed.selector, requester, o.nonce));
        market.postOffer(o, params, sig);
        vm.prank(requester);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NonceUsed.selector, requester, o.nonce));
        market.invalidateNonce(o.nonce);
    }

    // ------------------------------------------------------------ claim

    function test_claim_locksBondAndSetsDeadline() public {
        bytes32 id = post(makeOffer(PAY, BOND));
        vm.expectEmit(address(market));
        emit JobMarket.JobClaimed(id, provider, uint64(block.timestamp + 1 hours));
        vm.prank(provider);
        market.claim(id);
        JobMarket.Job memory j = market.getJob(id);
        assertTrue(j.state == JobMarket.JobState.Claimed, "claimed");
        assertEq(j.provider, provider, "provider recorded");
        assertEq(j.due, block.timestamp + 1 hours, "deadline");
        assertEq(registry.freeStake(provider), STAKE - BOND, "bond locked");
    }

    function test_claim_revertsForUnregistered() public {
        bytes32 id = post(makeOffer(PAY, BOND));
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.NotRegistered.selector, stranger));
        market.claim(id);
    }

    function test_claim_revertsWithoutFreeStake() public {
        bytes32 id = post(makeOffer(PAY, STAKE + 1));
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(ProviderRegistry.InsufficientFreeStake.selector, STAKE + 1, STAKE));
        market.claim(id);
    }

    function test_claim_revertsForOtherProviderWhenAddressed() public {
        address other = address(0x0707);
        vm.prank(owner);
        token.mint(other, STAKE);
        registerProvider(other, address(0x0708), STAKE);
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.provider = provider;
        bytes32 id = post(o);
        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.ProviderMismatch.selector, provider, other));
        market.claim(id);
        vm.prank(provider);
        market.claim(id);
    }

    function test_claim_revertsAfterExpiry() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes32 id = post(o);
        vm.warp(o.expiry);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.OfferExpired.selector, o.expiry));
        market.claim(id);
    }

    function test_claim_revertsTwiceAndOnUnknownJob() public {
        (bytes32 id,) = postAndClaim(PAY, BOND);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Claimed));
        market.claim(id);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, bytes32(0), JobMarket.JobState.None));
        market.claim(bytes32(0));
    }

    function test_claim_revertsWhenPaused() public {
        bytes32 id = post(makeOffer(PAY, BOND));
        vm.prank(owner);
        market.pause();
        vm.prank(provider);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        market.claim(id);
    }

    function test_claimSigned_postsAndClaims() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.provider = provider;
        bytes memory sig = sign(requesterKey, o);
        vm.prank(provider);
        bytes32 id = market.claimSigned(o, params, sig);
        JobMarket.Job memory j = market.getJob(id);
        assertTrue(j.state == JobMarket.JobState.Claimed, "claimed in one tx");
        assertEq(j.provider, provider, "provider");
        assertEq(j.due, block.timestamp + o.maxDuration, "deadline");
        assertEq(registry.freeStake(provider), STAKE - BOND, "bond locked");
        assertEq(token.balanceOf(address(market)), PAY, "escrowed");
    }

    function test_claimSigned_revertsForOtherProvider() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.provider = address(0x0707);
        bytes memory sig = sign(requesterKey, o);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.ProviderMismatch.selector, address(0x0707), provider));
        market.claimSigned(o, params, sig);
    }

    function test_claimSigned_revertsOnOverlongDuration() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.maxDuration = type(uint64).max;
        bytes memory sig = sign(requesterKey, o);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidDuration.selector, o.maxDuration));
        market.claimSigned(o, params, sig);
    }

    function test_claimSigned_revertsWhenPaused() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(requesterKey, o);
        vm.prank(owner);
        market.pause();
        vm.prank(provider);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        market.claimSigned(o, params, sig);
    }

    // ------------------------------------------------------------ submit

    function test_submit_recordsCommitmentAndStartsWindow() public {
        (bytes32 id,) = postAndClaim(PAY, BOND);
        vm.expectEmit(address(market));
        emit JobMarket.ResultSubmitted(id, provider, keccak256("r"), 8192, "uri", uint64(block.timestamp + WINDOW));
        vm.prank(provider);
        market.submitResult(id, keccak256("r"), 8192, "uri");
        JobMarket.Job memory j = market.getJob(id);
        assertTrue(j.state == JobMarket.JobState.Submitted, "submitted");
        assertEq(j.due, block.timestamp + WINDOW, "window end");
        assertEq(j.resultRoot, keccak256("r"), "root in the job view");
        assertEq(market.resultRootOf(id), keccak256("r"), "root");
    }

    function test_submit_reverts() public {
        (bytes32 id,) = postAndClaim(PAY, BOND);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotProvider.selector, stranger));
        market.submitResult(id, keccak256("r"), 1, "");
        vm.startPrank(provider);
        vm.expectRevert(JobMarket.EmptyResult.selector);
        market.submitResult(id, bytes32(0), 1, "");
        vm.expectRevert(JobMarket.EmptyResult.selector);
        market.submitResult(id, keccak256("r"), 0, "");
        uint64 deadline = market.getJob(id).due;
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.DeadlinePassed.selector, deadline));
        market.submitResult(id, keccak256("r"), 1, "");
        vm.stopPrank();
    }

    function test_submit_allowedAtDeadlineAndWhilePaused() public {
        (bytes32 id,) = postAndClaim(PAY, BOND);
        vm.prank(owner);
        market.pause();
        vm.warp(market.getJob(id).due);
        vm.prank(provider);
        market.submitResult(id, keccak256("r"), 1, "");
        assertTrue(stateOf(id) == JobMarket.JobState.Submitted, "submitted while paused");
    }

    function test_submit_revertsTwice() public {
        (bytes32 id,) = submitted(PAY, BOND);
        vm.prank(provider);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Submitted));
        market.submitResult(id, keccak256("r"), 1, "");
    }

    // ------------------------------------------------------------ finalize / accept

    function test_finalize_paysPayoutFeeAndUnlocksBond() public {
        (bytes32 id,) = submitted(PAY, BOND);
        uint256 fee = PAY * FEE_BPS / 10_000;
        vm.warp(block.timestamp + WINDOW);
        vm.expectEmit(address(market));
        emit JobMarket.JobFinalized(id, registry.idOf(provider), payout, PAY - fee, fee);
        vm.prank(stranger);
        market.finalize(id);
        assertEq(market.balanceOf(payout), PAY - fee, "provider paid to payout address");
        assertEq(market.balanceOf(treasury), fee, "fee to treasury");
        assertEq(registry.freeStake(provider), STAKE, "bond unlocked");
        assertTrue(stateOf(id) == JobMarket.JobState.Finalized, "finalized");

        vm.prank(payout);
        market.withdraw();
        assertEq(token.balanceOf(payout), PAY - fee, "withdrawn");
        vm.prank(treasury);
        market.withdrawTo(address(0xCAFE));
        assertEq(token.balanceOf(address(0xCAFE)), fee, "fees withdrawn elsewhere");
        assertEq(token.balanceOf(address(market)), 0, "market empty");
    }

    function test_finalize_reverts() public {
        (bytes32 id,) = submitted(PAY, BOND);
        uint64 end = market.getJob(id).due;
        vm.expectRevert(abi.encodeWithSelector(JobMarket.ChallengeWindowOpen.selector, end));
        market.finalize(id);
        vm.warp(end);
        market.finalize(id);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Finalized));
        market.finalize(id);
    }

    function test_finalize_usesFeeSnapshotFromPost() public {
        bytes32 id = post(makeOffer(PAY, BOND));
        vm.prank(owner);
        market.setFee(1_000);
        vm.startPrank(provider);
        market.claim(id);
        market.submitResult(id, keccak256("r"), 1, "");
        vm.stopPrank();
        vm.warp(block.timestamp + WINDOW);
        market.finalize(id);
        assertEq(market.balanceOf(treasury), PAY * FEE_BPS / 10_000, "fee at post time, not the raised one");
    }

    function test_finalizeMany_skipsWhatIsNotDue() public {
        (bytes32 a,) = submitted(PAY, BOND);
        (bytes32 b,) = submitted(PAY, BOND);
        (bytes32 c,) = postAndClaim(PAY, BOND);
        vm.warp(block.timestamp + WINDOW);
        market.finalize(a);
        bytes32[] memory ids = new bytes32[](4);
        ids[0] = a;
        ids[1] = b;
        ids[2] = c;
        ids[3] = keccak256("unknown");
        assertEq(market.finalizeMany(ids), 1, "only b was due");
        assertTrue(stateOf(b) == JobMarket.JobState.Finalized, "b finalized");
        assertTrue(stateOf(c) == JobMarket.JobState.Claimed, "c untouched");
        uint256 fee = PAY * FEE_BPS / 10_000;
        assertEq(market.balanceOf(payout), 2 * (PAY - fee), "a and b paid once each");
    }

    function test_finalize_notBlockedByPause() public {
        (bytes32 id,) = submitted(PAY, BOND);
        vm.prank(owner);
        market.pause();
        vm.warp(block.timestamp + WINDOW);
        market.finalize(id);
        vm.prank(payout);
        market.withdraw();
        assertGe(token.balanceOf(payout), 1, "withdraw works while paused");
    }

    function test_accept_finalizesImmediately() public {
        (bytes32 id,) = submitted(PAY, BOND);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotRequester.selector, stranger));
        market.accept(id);
        vm.prank(requester);
        market.accept(id);
        assertTrue(stateOf(id) == JobMarket.JobState.Finalized, "accepted");
        vm.prank(requester);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Finalized));
        market.accept(id);
    }

    function test_finalize_withZeroBond() public {
        (bytes32 id,) = submitted(PAY, 0);
        vm.warp(block.timestamp + WINDOW);
        market.finalize(id);
        assertEq(registry.freeStake(provider), STAKE, "nothing was locked");
    }

    // ------------------------------------------------------------ expire

    function test_expire_unclaimedOfferRefunds() public {
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes32 id = post(o);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotExpirable.selector, id, JobMarket.JobState.Open, o.expiry));
        market.expire(id);
        vm.warp(o.expiry);
        market.expire(id);
        assertEq(market.balanceOf(requester), PAY, "refund");
        assertTrue(stateOf(id) == JobMarket.JobState.Expired, "expired");
    }

    function test_expire_missedDeadlineSlashesBondToRequester() public {
        (bytes32 id,) = postAndClaim(PAY, BOND);
        uint64 deadline = market.getJob(id).due;
        vm.warp(deadline);
        vm.expectRevert(
            abi.encodeWithSelector(JobMarket.NotExpirable.selector, id, JobMarket.JobState.Claimed, deadline)
        );
        market.expire(id);
        vm.warp(deadline + 1);
        vm.expectEmit(address(market));
        emit JobMarket.JobExpired(id, PAY, BOND);
        vm.prank(stranger);
        market.expire(id);
        assertEq(market.balanceOf(requester), PAY + BOND, "refund plus compensation");
        assertEq(registry.getProvider(provider).stake, STAKE - BOND, "stake slashed");
        assertEq(registry.freeStake(provider), STAKE - BOND, "no longer locked");
        assertEq(token.balanceOf(address(market)), PAY + BOND, "slashed bond moved into the market");
        vm.expectRevert(
            abi.encodeWithSelector(JobMarket.NotExpirable.selector, id, JobMarket.JobState.Expired, deadline)
        );
        market.expire(id);
    }

    function test_expire_notForSubmittedJobs() public {
        (bytes32 id,) = submitted(PAY, BOND);
        JobMarket.Job memory j = market.getJob(id);
        vm.warp(j.due + 365 days);
        vm.expectRevert(
            abi.encodeWithSelector(JobMarket.NotExpirable.selector, id, JobMarket.JobState.Submitted, j.due)
        );
        market.expire(id);
    }

    // ------------------------------------------------------------ disputes

    function test_dispute_providerRight() public {
        vm.prank(owner);
        market.setDisputeBond(5 ether);
        (bytes32 id,) = submitted(PAY, BOND);
        vm.prank(requester);
        market.dispute(id);
        assertTrue(stateOf(id) == JobMarket.JobState.Disputed, "disputed");
        assertEq(market.disputeBondOf(id), 5 ether, "dispute bond held");
        vm.warp(block.timestamp + WINDOW);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Disputed));
        market.finalize(id);
        vm.prank(arbiter);
        market.resolve(id, true);
        uint256 fee = PAY * FEE_BPS / 10_000;
        assertEq(market.balanceOf(payout), PAY - fee + 5 ether, "paid plus the dispute bond");
        assertEq(registry.freeStake(provider), STAKE, "bond unlocked");
        assertTrue(stateOf(id) == JobMarket.JobState.Finalized, "finalized");
    }

    function test_dispute_providerWrong() public {
        vm.prank(owner);
        market.setDisputeBond(5 ether);
        (bytes32 id,) = submitted(PAY, BOND);
        vm.prank(requester);
        market.dispute(id);
        vm.prank(arbiter);
        market.resolve(id, false);
        assertEq(market.balanceOf(requester), PAY + 5 ether + BOND, "refund, dispute bond back, provider bond");
        assertEq(market.balanceOf(payout), 0, "provider unpaid");
        assertEq(registry.getProvider(provider).stake, STAKE - BOND, "slashed");
        assertTrue(stateOf(id) == JobMarket.JobState.Slashed, "slashed");
    }

    function test_dispute_reverts() public {
        (bytes32 id,) = submitted(PAY, BOND);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotRequester.selector, stranger));
        market.dispute(id);
        uint64 end = market.getJob(id).due;
        vm.warp(end);
        vm.prank(requester);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.ChallengeWindowClosed.selector, end));
        market.dispute(id);
        (bytes32 open,) = postAndClaim(PAY, BOND);
        vm.prank(requester);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, open, JobMarket.JobState.Claimed));
        market.dispute(open);
    }

    function test_resolve_reverts() public {
        (bytes32 id,) = submitted(PAY, BOND);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotArbiter.selector, stranger));
        market.resolve(id, true);
        vm.prank(arbiter);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Submitted));
        market.resolve(id, true);
    }

    // ------------------------------------------------------------ verifier hook

    function test_verifier_fraudSlashesAndSplitsBond() public {
        MockVerifier v = new MockVerifier(WORKLOAD);
        vm.prank(owner);
        market.setVerifier(WORKLOAD, address(v));
        (bytes32 id, JobMarket.JobOffer memory o) = submitted(PAY, BOND);
        vm.prank(address(v));
        assertEq(market.openChallenge(o), id, "offer matched to job");
        vm.warp(block.timestamp + WINDOW);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Challenged));
        market.finalize(id);
        vm.prank(address(v));
        market.closeChallenge(o, true, stranger);
        assertEq(market.balanceOf(requester), PAY, "requester refunded");
        assertEq(market.balanceOf(stranger), BOND / 2, "challenger gets half");
        assertEq(market.balanceOf(treasury), BOND - BOND / 2, "treasury the rest");
        assertTrue(stateOf(id) == JobMarket.JobState.Slashed, "slashed");
    }

    function test_verifier_noFraudReturnsToSubmitted() public {
        MockVerifier v = new MockVerifier(WORKLOAD);
        vm.prank(owner);
        market.setVerifier(WORKLOAD, address(v));
        (bytes32 id, JobMarket.JobOffer memory o) = submitted(PAY, BOND);
        vm.startPrank(address(v));
        market.openChallenge(o);
        market.closeChallenge(o, false, address(0));
        vm.stopPrank();
        assertTrue(stateOf(id) == JobMarket.JobState.Submitted, "back to submitted");
        vm.warp(block.timestamp + WINDOW);
        market.finalize(id);
    }

    function test_verifier_reverts() public {
        MockVerifier v = new MockVerifier(WORKLOAD);
        vm.prank(owner);
        vm.expectRevert(
            abi.encodeWithSelector(JobMarket.VerifierWorkloadMismatch.selector, bytes32(uint256(1)), WORKLOAD)
        );
        market.setVerifier(bytes32(uint256(1)), address(v));
        vm.prank(owner);
        market.setVerifier(WORKLOAD, address(v));
        (bytes32 id, JobMarket.JobOffer memory o) = submitted(PAY, BOND);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotVerifier.selector, stranger));
        market.openChallenge(o);
        vm.prank(address(v));
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidState.selector, id, JobMarket.JobState.Submitted));
        market.closeChallenge(o, true, stranger);
        vm.prank(address(v));
        market.openChallenge(o);
        vm.prank(address(v));
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        market.closeChallenge(o, true, address(0));
        // A verifier for another workload cannot touch this job: the workload is read from the offer.
        o.workload = keccak256("other/v1");
        vm.prank(address(v));
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotVerifier.selector, address(v)));
        market.openChallenge(o);
    }

    function test_verifier_cannotChallengeAfterWindow() public {
        MockVerifier v = new MockVerifier(WORKLOAD);
        vm.prank(owner);
        market.setVerifier(WORKLOAD, address(v));
        (bytes32 id, JobMarket.JobOffer memory o) = submitted(PAY, BOND);
        uint64 end = market.getJob(id).due;
        vm.warp(end);
        vm.prank(address(v));
        vm.expectRevert(abi.encodeWithSelector(JobMarket.ChallengeWindowClosed.selector, end));
        market.openChallenge(o);
    }

    // ------------------------------------------------------------ withdraw

    function test_withdraw_reverts() public {
        vm.prank(stranger);
        vm.expectRevert(JobMarket.NothingToWithdraw.selector);
        market.withdraw();
        vm.prank(stranger);
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        market.withdrawTo(address(0));
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        market.withdrawFor(address(0));
        vm.expectRevert(JobMarket.NothingToWithdraw.selector);
        market.withdrawFor(payout);
    }

    function test_withdrawFor_pays_only_the_account_itself() public {
        (bytes32 id,) = submitted(PAY, BOND);
        vm.warp(block.timestamp + WINDOW);
        market.finalize(id);
        uint256 owed = market.balanceOf(payout);
        assertGe(owed, 1, "credited");
        uint256 callerTokens = token.balanceOf(provider);
        vm.expectEmit(address(market));
        emit JobMarket.Withdrawn(payout, payout, owed);
        vm.prank(provider); // the node's operator key triggers it; the money still goes to the payout address
        market.withdrawFor(payout);
        assertEq(token.balanceOf(payout), owed, "paid to the payout address");
        assertEq(token.balanceOf(provider), callerTokens, "never to the caller");
        assertEq(market.balanceOf(payout), 0, "balance cleared");
        vm.expectRevert(JobMarket.NothingToWithdraw.selector);
        market.withdrawFor(payout);
    }

    // ------------------------------------------------------------ owner

    function test_owner_setters() public {
        vm.startPrank(owner);
        market.setFee(1_000);
        assertEq(market.feeBps(), 1_000, "fee");
        vm.expectRevert(abi.encodeWithSelector(JobMarket.FeeTooHigh.selector, uint16(1_001), uint16(1_000)));
        market.setFee(1_001);
        market.setChallengeWindow(2 days);
        assertEq(market.challengeWindow(), 2 days, "window");
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidChallengeWindow.selector, uint64(59)));
        market.setChallengeWindow(59);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidChallengeWindow.selector, uint64(31 days)));
        market.setChallengeWindow(31 days);
        market.setArbiter(stranger);
        assertEq(market.arbiter(), stranger, "arbiter");
        market.setTreasury(stranger);
        assertEq(market.treasury(), stranger, "treasury");
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        market.setTreasury(address(0));
        market.setDisputeBond(7);
        assertEq(market.disputeBond(), 7, "dispute bond");
        market.setVerifier(WORKLOAD, address(0));
        market.pause();
        assertTrue(market.paused(), "paused");
        market.unpause();
        assertFalse(market.paused(), "unpaused");
        vm.stopPrank();
    }

    function test_owner_onlyOwner() public {
        bytes memory err = abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger);
        vm.startPrank(stranger);
        vm.expectRevert(err);
        market.setFee(1);
        vm.expectRevert(err);
        market.setChallengeWindow(1 hours);
        vm.expectRevert(err);
        market.setArbiter(stranger);
        vm.expectRevert(err);
        market.setTreasury(stranger);
        vm.expectRevert(err);
        market.setDisputeBond(1);
        vm.expectRevert(err);
        market.setVerifier(WORKLOAD, address(0));
        vm.expectRevert(err);
        market.pause();
        vm.expectRevert(err);
        market.unpause();
        vm.stopPrank();
    }

    function test_owner_transferIsTwoStep() public {
        vm.prank(owner);
        market.transferOwnership(stranger);
        assertEq(market.owner(), owner, "not yet");
        vm.prank(stranger);
        market.acceptOwnership();
        assertEq(market.owner(), stranger, "accepted");
    }

    function test_constructor_validates() public {
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        new JobMarket(ProviderRegistry(address(0)), treasury, 0, WINDOW, arbiter, owner);
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        new JobMarket(registry, address(0), 0, WINDOW, arbiter, owner);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.FeeTooHigh.selector, uint16(2_000), uint16(1_000)));
        new JobMarket(registry, treasury, 2_000, WINDOW, arbiter, owner);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.InvalidChallengeWindow.selector, uint64(0)));
        new JobMarket(registry, treasury, 0, 0, arbiter, owner);
    }

    // ------------------------------------------------------------ fuzz

    function testFuzz_settlementConservesTokens(uint256 payment, uint256 bond, uint16 fee) public {
        payment = bound(payment, 1, 1_000_000 ether - 1);
        bond = bound(bond, 0, STAKE);
        fee = uint16(bound(fee, 0, 1_000));
        vm.prank(owner);
        market.setFee(fee);
        (bytes32 id,) = submitted(payment, bond);
        vm.warp(block.timestamp + WINDOW);
        market.finalize(id);
        uint256 f = payment * fee / 10_000;
        assertEq(market.balanceOf(payout) + market.balanceOf(treasury), payment, "payment fully distributed");
        assertEq(market.balanceOf(treasury), f, "fee");
        assertEq(token.balanceOf(address(market)), payment, "balances equal holdings");
    }

    function testFuzz_deadlineBoundary(uint64 duration, uint256 late) public {
        duration = uint64(bound(duration, 1, 365 days));
        late = bound(late, 0, 2 * uint256(duration));
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        o.maxDuration = duration;
        bytes32 id = post(o);
        vm.prank(provider);
        market.claim(id);
        uint64 deadline = uint64(block.timestamp) + duration;
        vm.warp(block.timestamp + late);
        vm.prank(provider);
        if (block.timestamp <= deadline) {
            market.submitResult(id, keccak256("r"), 1, "");
            assertTrue(stateOf(id) == JobMarket.JobState.Submitted, "on time");
        } else {
            vm.expectRevert(abi.encodeWithSelector(JobMarket.DeadlinePassed.selector, deadline));
            market.submitResult(id, keccak256("r"), 1, "");
            market.expire(id);
        }
    }

    function testFuzz_onlyTheRequesterKeySigns(uint256 key, uint256 tamper) public {
        key = bound(key, 1, 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140);
        JobMarket.JobOffer memory o = makeOffer(PAY, BOND);
        bytes memory sig = sign(key, o);
        if (key != requesterKey) {
            vm.expectRevert(JobMarket.InvalidSignature.selector);
            market.postOffer(o, params, sig);
        }
        // Flipping any one byte of a valid signature invalidates it (or makes it malleable-invalid).
        sig = sign(requesterKey, o);
        uint256 i = bound(tamper, 0, 64);
        sig[i] = bytes1(uint8(sig[i]) ^ 0x01);
        vm.expectRevert(JobMarket.InvalidSignature.selector);
        market.postOffer(o, params, sig);
    }

    function testFuzz_nonceBitmap(uint256 a, uint256 b) public {
        vm.assume(a != b);
        vm.startPrank(requester);
        market.invalidateNonce(a);
        assertTrue(market.isNonceUsed(requester, a), "a used");
        assertFalse(market.isNonceUsed(requester, b), "b untouched");
        market.invalidateNonce(b);
        assertTrue(market.isNonceUsed(requester, b), "b used");
        vm.stopPrank();
    }
}
