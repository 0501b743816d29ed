// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ClusterEscrow} from "../src/ClusterEscrow.sol";
import {TestUSDC} from "../src/TestUSDC.sol";
import {BaseTest, MockWallet} from "./Base.t.sol";

/// @dev A token whose transferFrom calls back into the escrow, to prove the reentrancy guard holds.
contract ReentrantToken is ERC20 {
    ClusterEscrow public target;

    constructor() ERC20("Reentrant", "RE") {}

    function setTarget(ClusterEscrow target_) external {
        target = target_;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        if (address(target) != address(0)) target.deposit(1);
        return super.transferFrom(from, to, value);
    }
}

contract ClusterEscrowTest is BaseTest {
    event Deposited(address indexed payer, address indexed from, uint256 amount);
    event GatewayAuthorized(address indexed payer, address indexed gateway, uint256 cap, uint256 effectiveAt);
    event Settled(bytes32 indexed batchId, address indexed gateway, address indexed payer, uint256 amount);
    event EarningsCredited(bytes32 indexed batchId, address indexed gateway, address indexed payee, uint256 amount);
    event BatchSettled(bytes32 indexed batchId, address indexed gateway, uint256 total);
    event WithdrawRequested(address indexed payer, uint256 amount, uint256 thawing, uint256 thawEndsAt);
    event WithdrawCancelled(address indexed payer, uint256 amount);
    event Withdrawn(address indexed payer, uint256 amount);
    event EarningsClaimed(address indexed payee, address indexed to, uint256 amount);

    bytes32 internal constant BATCH = keccak256("batch-1");

    // ----------------------------------------------------------------------------------------- constructor

    function test_constructor_setsTokenAndThawPeriod() public view {
        assertEq(address(escrow.token()), address(usdc));
        assertEq(escrow.thawPeriod(), THAW);
    }

    function test_constructor_acceptsZeroAndMaxThawPeriod() public {
        assertEq(new ClusterEscrow(usdc, 0).thawPeriod(), 0);
        assertEq(new ClusterEscrow(usdc, 365 days).thawPeriod(), 365 days);
    }

    function test_constructor_revertsOnZeroToken() public {
        vm.expectRevert(ClusterEscrow.ZeroAddress.selector);
        new ClusterEscrow(IERC20(address(0)), THAW);
    }

    function test_constructor_revertsOnTooLongThaw() public {
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.ThawPeriodTooLong.selector, 365 days + 1, 365 days));
        new ClusterEscrow(usdc, 365 days + 1);
    }

    function test_domainSeparator_isEip712OfNameAndVersion() public view {
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("ClusterEscrow"),
                keccak256("1"),
                block.chainid,
                address(escrow)
            )
        );
        assertEq(escrow.DOMAIN_SEPARATOR(), expected);
    }

    // --------------------------------------------------------------------------------------------- deposit

    function test_deposit_pullsTokensAndCredits() public {
        _fund(alice, 100 * USDC);
        vm.expectEmit(address(escrow));
        emit Deposited(alice, alice, 60 * USDC);
        vm.prank(alice);
        escrow.deposit(60 * USDC);
        assertEq(escrow.balanceOf(alice), 60 * USDC);
        assertEq(escrow.accounts(alice).available, 60 * USDC);
        assertEq(usdc.balanceOf(alice), 40 * USDC);
        assertEq(usdc.balanceOf(address(escrow)), 60 * USDC);
    }

    function test_deposit_addsUp() public {
        _deposit(alice, 5 * USDC);
        _deposit(alice, 7 * USDC);
        assertEq(escrow.balanceOf(alice), 12 * USDC);
    }

    function test_deposit_revertsOnZeroAmount() public {
        vm.prank(alice);
        vm.expectRevert(ClusterEscrow.ZeroAmount.selector);
        escrow.deposit(0);
    }

    function test_deposit_revertsWithoutAllowance() public {
        usdc.mint(alice, 10 * USDC);
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(escrow), 0, 10 * USDC)
        );
        escrow.deposit(10 * USDC);
    }

    function test_deposit_revertsWithoutTokens() public {
        vm.prank(alice);
        usdc.approve(address(escrow), 10 * USDC);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, alice, 0, 10 * USDC));
        escrow.deposit(10 * USDC);
    }

    function test_deposit_revertsOnReentry() public {
        ReentrantToken bad = new ReentrantToken();
        ClusterEscrow badEscrow = new ClusterEscrow(bad, THAW);
        bad.setTarget(badEscrow);
        bad.mint(alice, 10);
        vm.prank(alice);
        bad.approve(address(badEscrow), 10);
        vm.prank(alice);
        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        badEscrow.deposit(10);
    }

    // ------------------------------------------------------------------------------------------ depositFor

    function test_depositFor_creditsBeneficiary() public {
        _fund(bob, 10 * USDC);
        vm.expectEmit(address(escrow));
        emit Deposited(alice, bob, 10 * USDC);
        vm.prank(bob);
        escrow.depositFor(alice, 10 * USDC);
        assertEq(escrow.balanceOf(alice), 10 * USDC);
        assertEq(escrow.balanceOf(bob), 0);
        assertEq(usdc.balanceOf(bob), 0);
    }

    function test_depositFor_revertsOnZeroBeneficiary() public {
        _fund(bob, 10 * USDC);
        vm.prank(bob);
        vm.expectRevert(ClusterEscrow.ZeroAddress.selector);
        escrow.depositFor(address(0), 10 * USDC);
    }

    function test_depositFor_revertsOnZeroAmount() public {
        vm.prank(bob);
        vm.expectRevert(ClusterEscrow.ZeroAmount.selector);
        escrow.depositFor(alice, 0);
    }

    // ---------------------------------------------------------------------------- depositWithAuthorization

    function test_depositWithAuthorization_relayedCreditsFrom() public {
        usdc.mint(alice, 50 * USDC);
        bytes32 salt = keccak256("s1");
        (uint8 v, bytes32 r, bytes32 s) = _signDeposit(alicePk, alice, 50 * USDC, 0, block.timestamp + 1 hours, salt);
        vm.expectEmit(address(escrow));
        emit Deposited(alice, alice, 50 * USDC);
        vm.prank(relayer);
        escrow.depositWithAuthorization(alice, alice, 50 * USDC, 0, block.timestamp + 1 hours, salt, v, r, s);
        assertEq(escrow.balanceOf(alice), 50 * USDC);
        assertEq(usdc.balanceOf(alice), 0);
        assertEq(usdc.balanceOf(address(escrow)), 50 * USDC);
        assertTrue(usdc.authorizationState(alice, escrow.depositNonce(alice, salt)));
    }

    function test_depositWithAuthorization_creditsSignedBeneficiary() public {
        usdc.mint(alice, 50 * USDC);
        bytes32 salt = keccak256("s2");
        (uint8 v, bytes32 r, bytes32 s) = _signDeposit(alicePk, bob, 50 * USDC, 0, block.timestamp + 1 hours, salt);
        vm.expectEmit(address(escrow));
        emit Deposited(bob, alice, 50 * USDC);
        vm.prank(relayer);
        escrow.depositWithAuthorization(alice, bob, 50 * USDC, 0, block.timestamp + 1 hours, salt, v, r, s);
        assertEq(escrow.balanceOf(bob), 50 * USDC);
        assertEq(escrow.balanceOf(alice), 0);
    }

    function test_depositWithAuthorization_revertsWhenBeneficiarySwapped() public {
        usdc.mint(alice, 50 * USDC);
        bytes32 salt = keccak256("s3");
        (uint8 v, bytes32 r, bytes32 s) = _signDeposit(alicePk, bob, 50 * USDC, 0, block.timestamp + 1 hours, salt);
        // A front-runner copies the call but credits itself (or alice): the derived nonce no longer matches.
        vm.prank(relayer);
        vm.expectRevert(TestUSDC.InvalidSignature.selector);
        escrow.depositWithAuthorization(alice, relayer, 50 * USDC, 0, block.timestamp + 1 hours, salt, v, r, s);
        vm.expectRevert(TestUSDC.InvalidSignature.selector);
        escrow.depositWithAuthorization(alice, alice, 50 * USDC, 0, block.timestamp + 1 hours, salt, v, r, s);
    }

    function test_depositWithAuthorization_revertsWhenAmountChanged() public {
        usdc.mint(alice, 50 * USDC);
        (uint8 v, bytes32 r, bytes32 s) = _signDeposit(alicePk, alice, 10 * USDC, 0, block.timestamp + 1 hours, 0);
        vm.expectRevert(TestUSDC.InvalidSignature.selector);
        escrow.depositWithAuthorization(alice, alice, 50 * USDC, 0, block.timestamp + 1 hours, 0, v, r, s);
    }

    function test_depositWithAuthorization_revertsOnReplay() public {
        usdc.mint(alice, 100 * USDC);
        (uint8 v, bytes32 r, bytes32 s) = _signDeposit(alicePk, alice, 10 * USDC, 0, block.timestamp + 1 hours, 0);
        escrow.depositWithAuthorization(alice, alice, 10 * USDC, 0, block.timestamp + 1 hours, 0, v, r, s);
        vm.expectRevert(
            abi.encodeWithSelector(TestUSDC.AuthorizationAlreadyUsed.selector, alice, escrow.depositNonce(alice, 0))
        );
        escrow.depositWithAuthorization(alice, alice, 10 * USDC, 0, block.timestamp + 1 hours, 0, v, r, s);
    }

    function test_depositWithAuthorization_revertsWhenExpired() public {
        usdc.mint(alice, 10 * USDC);
        uint256 validBefore = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signDeposit(alicePk, alice, 10 * USDC, 0, validBefore, 0);
        vm.warp(validBefore);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.AuthorizationExpired.selector, validBefore));
        escrow.depositWithAuthorization(alice, alice, 10 * USDC, 0, validBefore, 0, v, r, s);
    }

    function test_depositWithAuthorization_revertsWhenNotYetValid() public {
        usdc.mint(alice, 10 * USDC);
        uint256 validAfter = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = _signDeposit(alicePk, alice, 10 * USDC, validAfter, validAfter + 1 hours, 0);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.AuthorizationNotYetValid.selector, validAfter));
        escrow.depositWithAuthorization(alice, alice, 10 * USDC, validAfter, validAfter + 1 hours, 0, v, r, s);
    }

    function test_depositWithAuthorization_revertsOnZeroAmountOrBeneficiary() public {
        vm.expectRevert(ClusterEscrow.ZeroAmount.selector);
        escrow.depositWithAuthorization(alice, alice, 0, 0, type(uint256).max, 0, 27, 0, 0);
        vm.expectRevert(ClusterEscrow.ZeroAddress.selector);
        escrow.depositWithAuthorization(alice, address(0), 1, 0, type(uint256).max, 0, 27, 0, 0);
    }

    function test_depositWithAuthorization_signatureUnusableOutsideEscrow() public {
        usdc.mint(alice, 10 * USDC);
        bytes32 nonce = escrow.depositNonce(alice, 0);
        (uint8 v, bytes32 r, bytes32 s) = _signDeposit(alicePk, alice, 10 * USDC, 0, block.timestamp + 1 hours, 0);
        // Only the payee (the escrow) may submit a ReceiveWithAuthorization to the token.
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.CallerMustBePayee.selector, relayer, address(escrow)));
        usdc.receiveWithAuthorization(alice, address(escrow), 10 * USDC, 0, block.timestamp + 1 hours, nonce, v, r, s);
    }

    function test_depositNonce_isHashOfBeneficiaryAndSalt() public view {
        assertEq(escrow.depositNonce(bob, bytes32(uint256(7))), keccak256(abi.encode(bob, bytes32(uint256(7)))));
    }

    // ------------------------------------------------------------------------------------ authorizeGateway

    function test_authorizeGateway_raisesAtOnce() public {
        vm.expectEmit(address(escrow));
        emit GatewayAuthorized(alice, gateway, 10 * USDC, block.timestamp);
        _authorize(alice, gateway, 10 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), 10 * USDC);
        _authorize(alice, gateway, 25 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), 25 * USDC);
        _authorize(alice, gateway, 25 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), 25 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway2), 0);
        assertEq(escrow.gatewayCap(bob, gateway), 0);
    }

    function test_authorizeGateway_lowersAfterThaw() public {
        _authorize(alice, gateway, 10 * USDC);
        vm.expectEmit(address(escrow));
        emit GatewayAuthorized(alice, gateway, 3 * USDC, block.timestamp + THAW);
        _authorize(alice, gateway, 3 * USDC);
        (uint256 cap, uint256 pendingCap, uint256 pendingAt) = escrow.authorization(alice, gateway);
        assertEq(cap, 10 * USDC);
        assertEq(pendingCap, 3 * USDC);
        assertEq(pendingAt, block.timestamp + THAW);
        vm.warp(block.timestamp + THAW - 1);
        assertEq(escrow.gatewayCap(alice, gateway), 10 * USDC, "not yet");
        vm.warp(block.timestamp + 1);
        assertEq(escrow.gatewayCap(alice, gateway), 3 * USDC);
    }

    function test_authorizeGateway_revokedGatewayCanSettleServedUsageDuringThaw() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        _authorize(alice, gateway, 0);
        vm.warp(block.timestamp + THAW - 1);
        _settle1(gateway, BATCH, alice, node1, 4 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), 6 * USDC);
        vm.warp(block.timestamp + 1);
        assertEq(escrow.gatewayCap(alice, gateway), 0);
        vm.prank(gateway);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.CapExceeded.selector, alice, gateway, 0, 1));
        escrow.settle(keccak256("b2"), _debits1(alice, 1), _credits1(node1, 1));
    }

    function test_authorizeGateway_loweredCapIsMinOfWhatIsLeft() public {
        _deposit(alice, 20 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        _authorize(alice, gateway, 8 * USDC);
        _settle1(gateway, BATCH, alice, node1, 5 * USDC);
        vm.warp(block.timestamp + THAW);
        assertEq(escrow.gatewayCap(alice, gateway), 5 * USDC, "min(5 left, 8)");
        _settle1(gateway, keccak256("b2"), alice, node1, 5 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), 0);
        (uint256 cap, uint256 pendingCap, uint256 pendingAt) = escrow.authorization(alice, gateway);
        assertEq(cap, 0);
        assertEq(pendingCap, 0, "applied and cleared by settle");
        assertEq(pendingAt, 0);
    }

    function test_authorizeGateway_raiseCancelsPendingDecrease() public {
        _authorize(alice, gateway, 10 * USDC);
        _authorize(alice, gateway, 2 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        (, uint256 pendingCap, uint256 pendingAt) = escrow.authorization(alice, gateway);
        assertEq(pendingCap, 0);
        assertEq(pendingAt, 0);
        vm.warp(block.timestamp + THAW);
        assertEq(escrow.gatewayCap(alice, gateway), 10 * USDC);
    }

    function test_authorizeGateway_lowerAgainRestartsThaw() public {
        _authorize(alice, gateway, 10 * USDC);
        _authorize(alice, gateway, 5 * USDC);
        vm.warp(block.timestamp + 1 days);
        _authorize(alice, gateway, 4 * USDC);
        (, uint256 pendingCap, uint256 pendingAt) = escrow.authorization(alice, gateway);
        assertEq(pendingCap, 4 * USDC);
        assertEq(pendingAt, block.timestamp + THAW);
    }

    function test_authorizeGateway_unlimitedCap() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, type(uint256).max);
        assertEq(escrow.gatewayCap(alice, gateway), type(uint256).max);
        _authorize(alice, gateway2, uint256(type(uint192).max) + 1);
        assertEq(escrow.gatewayCap(alice, gateway2), type(uint256).max, "anything >= 2^192 - 1 is unlimited");
        // lowering an unlimited cap: unlimited until the thaw ends, then the new cap
        _authorize(alice, gateway, 5 * USDC);
        _settle1(gateway, BATCH, alice, node1, 6 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), type(uint256).max);
        vm.warp(block.timestamp + THAW);
        assertEq(escrow.gatewayCap(alice, gateway), 5 * USDC);
        _settle1(gateway, keccak256("b2"), alice, node1, 1 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), 4 * USDC);
    }

    function test_authorizeGateway_zeroThawPeriodLowersAtOnce() public {
        ClusterEscrow instant = new ClusterEscrow(usdc, 0);
        vm.startPrank(alice);
        instant.authorizeGateway(gateway, 10);
        instant.authorizeGateway(gateway, 0);
        vm.stopPrank();
        assertEq(instant.gatewayCap(alice, gateway), 0);
    }

    function test_authorizeGateway_revertsOnZeroGateway() public {
        vm.prank(alice);
        vm.expectRevert(ClusterEscrow.ZeroAddress.selector);
        escrow.authorizeGateway(address(0), 1);
    }

    // ----------------------------------------------------------------------------- authorizeGatewayWithSig

    function test_authorizeGatewayWithSig_setsCapAndUsesNonce() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signAuth(alicePk, alice, gateway, 25 * USDC, deadline);
        vm.expectEmit(address(escrow));
        emit GatewayAuthorized(alice, gateway, 25 * USDC, block.timestamp);
        vm.prank(gateway);
        escrow.authorizeGatewayWithSig(alice, gateway, 25 * USDC, deadline, sig);
        assertEq(escrow.gatewayCap(alice, gateway), 25 * USDC);
        assertEq(escrow.nonces(alice), 1);
    }

    function test_authorizeGatewayWithSig_anyoneMaySubmitAtDeadline() public {
        uint256 deadline = block.timestamp;
        bytes memory sig = _signAuth(alicePk, alice, gateway, 1, deadline);
        vm.prank(relayer);
        escrow.authorizeGatewayWithSig(alice, gateway, 1, deadline, sig);
        assertEq(escrow.gatewayCap(alice, gateway), 1);
    }

    function test_authorizeGatewayWithSig_revertsOnReplay() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signAuth(alicePk, alice, gateway, 25 * USDC, deadline);
        escrow.authorizeGatewayWithSig(alice, gateway, 25 * USDC, deadline, sig);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(alice, gateway, 25 * USDC, deadline, sig);
    }

    function test_authorizeGatewayWithSig_revertsWhenExpired() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signAuth(alicePk, alice, gateway, 1, deadline);
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.SignatureExpired.selector, deadline));
        escrow.authorizeGatewayWithSig(alice, gateway, 1, deadline, sig);
    }

    function test_authorizeGatewayWithSig_revertsOnWrongSigner() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signAuth(bobPk, alice, gateway, 1, deadline);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(alice, gateway, 1, deadline, sig);
    }

    function test_authorizeGatewayWithSig_revertsOnTamperedFields() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signAuth(alicePk, alice, gateway, 1, deadline);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(alice, gateway, 2, deadline, sig);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(alice, gateway2, 1, deadline, sig);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(alice, gateway, 1, deadline + 1, sig);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(alice, gateway, 1, deadline, hex"1234");
    }

    function test_authorizeGatewayWithSig_revertsOnZeroPayer() public {
        uint256 deadline = block.timestamp + 1 hours;
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(address(0), gateway, 1, deadline, new bytes(65));
    }

    function test_authorizeGatewayWithSig_revertsOnZeroGateway() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signAuth(alicePk, alice, address(0), 1, deadline);
        vm.expectRevert(ClusterEscrow.ZeroAddress.selector);
        escrow.authorizeGatewayWithSig(alice, address(0), 1, deadline, sig);
    }

    function test_authorizeGatewayWithSig_acceptsErc1271Wallet() public {
        MockWallet wallet = new MockWallet(bob);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signAuth(bobPk, address(wallet), gateway, 9, deadline);
        escrow.authorizeGatewayWithSig(address(wallet), gateway, 9, deadline, sig);
        assertEq(escrow.gatewayCap(address(wallet), gateway), 9);
        bytes memory wrong = _signAuth(alicePk, address(wallet), gateway, 9, deadline);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(address(wallet), gateway, 9, deadline, wrong);
    }

    // ---------------------------------------------------------------------------------------------- settle

    function test_settle_singlePayerManyPayees() public {
        _deposit(alice, 100 * USDC);
        _authorize(alice, gateway, 50 * USDC);
        ClusterEscrow.Credit[] memory credits = new ClusterEscrow.Credit[](2);
        credits[0] = ClusterEscrow.Credit(node1, 7 * USDC);
        credits[1] = ClusterEscrow.Credit(node2, 3 * USDC);

        vm.expectEmit(address(escrow));
        emit Settled(BATCH, gateway, alice, 10 * USDC);
        vm.expectEmit(address(escrow));
        emit EarningsCredited(BATCH, gateway, node1, 7 * USDC);
        vm.expectEmit(address(escrow));
        emit EarningsCredited(BATCH, gateway, node2, 3 * USDC);
        vm.expectEmit(address(escrow));
        emit BatchSettled(BATCH, gateway, 10 * USDC);
        vm.prank(gateway);
        escrow.settle(BATCH, _debits1(alice, 10 * USDC), credits);

        assertEq(escrow.balanceOf(alice), 90 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), 40 * USDC);
        assertEq(escrow.earnings(node1), 7 * USDC);
        assertEq(escrow.earnings(node2), 3 * USDC);
        assertTrue(escrow.isBatchSettled(gateway, BATCH));
        assertFalse(escrow.isBatchSettled(gateway2, BATCH));
        assertEq(usdc.balanceOf(address(escrow)), 100 * USDC);
    }

    function test_settle_manyPayersManyPayees() public {
        _deposit(alice, 10 * USDC);
        _deposit(bob, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        _authorize(bob, gateway, 10 * USDC);
        ClusterEscrow.Debit[] memory debits = new ClusterEscrow.Debit[](2);
        debits[0] = ClusterEscrow.Debit(alice, 4 * USDC);
        debits[1] = ClusterEscrow.Debit(bob, 6 * USDC);
        ClusterEscrow.Credit[] memory credits = new ClusterEscrow.Credit[](3);
        credits[0] = ClusterEscrow.Credit(node1, 5 * USDC);
        credits[1] = ClusterEscrow.Credit(node2, 4 * USDC);
        credits[2] = ClusterEscrow.Credit(node1, 1 * USDC);
        vm.prank(gateway);
        escrow.settle(BATCH, debits, credits);
        assertEq(escrow.balanceOf(alice), 6 * USDC);
        assertEq(escrow.balanceOf(bob), 4 * USDC);
        assertEq(escrow.earnings(node1), 6 * USDC);
        assertEq(escrow.earnings(node2), 4 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), 6 * USDC);
        assertEq(escrow.gatewayCap(bob, gateway), 4 * USDC);
    }

    function test_settle_duplicatePayerIsCheckedCumulatively() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 5 * USDC);
        ClusterEscrow.Debit[] memory debits = new ClusterEscrow.Debit[](2);
        debits[0] = ClusterEscrow.Debit(alice, 3 * USDC);
        debits[1] = ClusterEscrow.Debit(alice, 3 * USDC);
        vm.prank(gateway);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.CapExceeded.selector, alice, gateway, 2 * USDC, 3 * USDC));
        escrow.settle(BATCH, debits, _credits1(node1, 6 * USDC));
    }

    function test_settle_takesAvailableThenThawing() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 100 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(6 * USDC);
        _settle1(gateway, BATCH, alice, node1, 3 * USDC);
        ClusterEscrow.Account memory a = escrow.accounts(alice);
        assertEq(a.available, 1 * USDC);
        assertEq(a.thawing, 6 * USDC);
        _settle1(gateway, keccak256("b2"), alice, node1, 2 * USDC);
        a = escrow.accounts(alice);
        assertEq(a.available, 0);
        assertEq(a.thawing, 5 * USDC);
        assertEq(a.thawEndsAt, block.timestamp + THAW);
        _settle1(gateway, keccak256("b3"), alice, node1, 5 * USDC);
        a = escrow.accounts(alice);
        assertEq(a.thawing, 0);
        assertEq(a.thawEndsAt, 0, "an emptied thaw is cleared");
        assertEq(escrow.earnings(node1), 10 * USDC);
    }

    function test_settle_unlimitedCapIsNotConsumed() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, type(uint256).max);
        _settle1(gateway, BATCH, alice, node1, 10 * USDC);
        assertEq(escrow.gatewayCap(alice, gateway), type(uint256).max);
    }

    function test_settle_sameBatchIdForAnotherGateway() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        _authorize(alice, gateway2, 10 * USDC);
        _settle1(gateway, BATCH, alice, node1, 1 * USDC);
        _settle1(gateway2, BATCH, alice, node1, 1 * USDC);
        assertEq(escrow.earnings(node1), 2 * USDC);
    }

    function test_settle_revertsOnReplay() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        _settle1(gateway, BATCH, alice, node1, 1 * USDC);
        vm.prank(gateway);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.BatchAlreadySettled.selector, gateway, BATCH));
        escrow.settle(BATCH, _debits1(alice, 1 * USDC), _credits1(node1, 1 * USDC));
    }

    function test_settle_failedBatchCanBeRetried() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        vm.prank(gateway);
        vm.expectRevert();
        escrow.settle(BATCH, _debits1(alice, 11 * USDC), _credits1(node1, 11 * USDC));
        assertFalse(escrow.isBatchSettled(gateway, BATCH));
        _settle1(gateway, BATCH, alice, node1, 10 * USDC);
        assertTrue(escrow.isBatchSettled(gateway, BATCH));
    }

    function test_settle_revertsOnEmptyBatch() public {
        vm.startPrank(gateway);
        vm.expectRevert(ClusterEscrow.EmptyBatch.selector);
        escrow.settle(BATCH, new ClusterEscrow.Debit[](0), _credits1(node1, 1));
        vm.expectRevert(ClusterEscrow.EmptyBatch.selector);
        escrow.settle(BATCH, _debits1(alice, 1), new ClusterEscrow.Credit[](0));
        vm.stopPrank();
    }

    function test_settle_revertsWithoutAuthorization() public {
        _deposit(alice, 10 * USDC);
        vm.prank(gateway);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.CapExceeded.selector, alice, gateway, 0, 1));
        escrow.settle(BATCH, _debits1(alice, 1), _credits1(node1, 1));
    }

    function test_settle_revertsAfterRevocationThawed() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        _authorize(alice, gateway, 0);
        vm.warp(block.timestamp + THAW);
        vm.prank(gateway);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.CapExceeded.selector, alice, gateway, 0, 1));
        escrow.settle(BATCH, _debits1(alice, 1), _credits1(node1, 1));
    }

    function test_settle_revertsAboveCap() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 2 * USDC);
        vm.prank(gateway);
        vm.expectRevert(
            abi.encodeWithSelector(ClusterEscrow.CapExceeded.selector, alice, gateway, 2 * USDC, 2 * USDC + 1)
        );
        escrow.settle(BATCH, _debits1(alice, 2 * USDC + 1), _credits1(node1, 2 * USDC + 1));
    }

    function test_settle_revertsAboveBalance() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 100 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(4 * USDC);
        vm.prank(gateway);
        vm.expectRevert(
            abi.encodeWithSelector(ClusterEscrow.InsufficientBalance.selector, alice, 10 * USDC, 10 * USDC + 1)
        );
        escrow.settle(BATCH, _debits1(alice, 10 * USDC + 1), _credits1(node1, 10 * USDC + 1));
    }

    function test_settle_revertsOnZeroDebit() public {
        vm.prank(gateway);
        vm.expectRevert(ClusterEscrow.ZeroAmount.selector);
        escrow.settle(BATCH, _debits1(alice, 0), _credits1(node1, 1));
    }

    function test_settle_revertsOnZeroCredit() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        ClusterEscrow.Credit[] memory credits = new ClusterEscrow.Credit[](2);
        credits[0] = ClusterEscrow.Credit(node1, 1);
        credits[1] = ClusterEscrow.Credit(node2, 0);
        vm.prank(gateway);
        vm.expectRevert(ClusterEscrow.ZeroAmount.selector);
        escrow.settle(BATCH, _debits1(alice, 1), credits);
    }

    function test_settle_revertsOnZeroPayee() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        vm.prank(gateway);
        vm.expectRevert(ClusterEscrow.ZeroAddress.selector);
        escrow.settle(BATCH, _debits1(alice, 1), _credits1(address(0), 1));
    }

    function test_settle_revertsWhenCreditsFallShort() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        vm.prank(gateway);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.UnbalancedBatch.selector, 5, 4));
        escrow.settle(BATCH, _debits1(alice, 5), _credits1(node1, 4));
    }

    function test_settle_revertsWhenCreditsExceed() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        ClusterEscrow.Credit[] memory credits = new ClusterEscrow.Credit[](2);
        credits[0] = ClusterEscrow.Credit(node1, 3);
        credits[1] = ClusterEscrow.Credit(node2, 3);
        vm.prank(gateway);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.UnbalancedBatch.selector, 5, 6));
        escrow.settle(BATCH, _debits1(alice, 5), credits);
        credits[1] = ClusterEscrow.Credit(node2, type(uint256).max);
        vm.prank(gateway);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.UnbalancedBatch.selector, 5, type(uint256).max));
        escrow.settle(BATCH, _debits1(alice, 5), credits);
    }

    // ------------------------------------------------------------------------------------- requestWithdraw

    function test_requestWithdraw_startsThaw() public {
        _deposit(alice, 10 * USDC);
        vm.expectEmit(address(escrow));
        emit WithdrawRequested(alice, 4 * USDC, 4 * USDC, block.timestamp + THAW);
        vm.prank(alice);
        escrow.requestWithdraw(4 * USDC);
        ClusterEscrow.Account memory a = escrow.accounts(alice);
        assertEq(a.available, 6 * USDC);
        assertEq(a.thawing, 4 * USDC);
        assertEq(a.thawEndsAt, block.timestamp + THAW);
        assertEq(escrow.balanceOf(alice), 10 * USDC, "thawing still counts as balance");
    }

    function test_requestWithdraw_addsUpAndRestartsThaw() public {
        _deposit(alice, 10 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(4 * USDC);
        vm.warp(block.timestamp + 1 days);
        vm.expectEmit(address(escrow));
        emit WithdrawRequested(alice, 1 * USDC, 5 * USDC, block.timestamp + THAW);
        vm.prank(alice);
        escrow.requestWithdraw(1 * USDC);
        ClusterEscrow.Account memory a = escrow.accounts(alice);
        assertEq(a.thawing, 5 * USDC);
        assertEq(a.thawEndsAt, block.timestamp + THAW);
    }

    function test_requestWithdraw_revertsOnZero() public {
        vm.prank(alice);
        vm.expectRevert(ClusterEscrow.ZeroAmount.selector);
        escrow.requestWithdraw(0);
    }

    function test_requestWithdraw_revertsAboveAvailable() public {
        _deposit(alice, 10 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(4 * USDC);
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(ClusterEscrow.InsufficientBalance.selector, alice, 6 * USDC, 6 * USDC + 1)
        );
        escrow.requestWithdraw(6 * USDC + 1);
    }

    // ------------------------------------------------------------------------------ requestWithdrawWithSig

    function test_requestWithdrawTypehash_isTheDocumentedType() public view {
        assertEq(
            escrow.REQUEST_WITHDRAW_TYPEHASH(),
            keccak256("RequestWithdraw(address payer,uint256 amount,uint256 nonce,uint256 deadline)")
        );
    }

    function test_requestWithdrawWithSig_relayedStartsThawAndUsesNonce() public {
        _deposit(alice, 10 * USDC);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signWithdraw(alicePk, alice, 4 * USDC, deadline);
        uint256 escrowHeld = usdc.balanceOf(address(escrow));
        vm.expectEmit(address(escrow));
        emit WithdrawRequested(alice, 4 * USDC, 4 * USDC, block.timestamp + THAW);
        vm.prank(relayer);
        escrow.requestWithdrawWithSig(alice, 4 * USDC, deadline, sig);
        ClusterEscrow.Account memory a = escrow.accounts(alice);
        assertEq(a.available, 6 * USDC);
        assertEq(a.thawing, 4 * USDC);
        assertEq(a.thawEndsAt, block.timestamp + THAW);
        assertEq(escrow.balanceOf(alice), 10 * USDC, "thawing still counts as balance");
        assertEq(usdc.balanceOf(address(escrow)), escrowHeld, "no tokens move before withdraw()");
        assertEq(escrow.nonces(alice), 1);

        // then withdraw() by the payer after the thaw, as with requestWithdraw
        vm.warp(block.timestamp + THAW);
        vm.prank(alice);
        assertEq(escrow.withdraw(), 4 * USDC);
        assertEq(usdc.balanceOf(alice), 4 * USDC);
    }

    function test_requestWithdrawWithSig_acceptsAtDeadline() public {
        _deposit(alice, 10 * USDC);
        uint256 deadline = block.timestamp;
        bytes memory sig = _signWithdraw(alicePk, alice, 1, deadline);
        escrow.requestWithdrawWithSig(alice, 1, deadline, sig);
        assertEq(escrow.accounts(alice).thawing, 1);
    }

    function test_requestWithdrawWithSig_revertsWhenExpired() public {
        _deposit(alice, 10 * USDC);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signWithdraw(alicePk, alice, 1 * USDC, deadline);
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.SignatureExpired.selector, deadline));
        escrow.requestWithdrawWithSig(alice, 1 * USDC, deadline, sig);
    }

    function test_requestWithdrawWithSig_revertsOnWrongSigner() public {
        _deposit(alice, 10 * USDC);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signWithdraw(bobPk, alice, 1 * USDC, deadline);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.requestWithdrawWithSig(alice, 1 * USDC, deadline, sig);
    }

    function test_requestWithdrawWithSig_revertsOnTamperedFields() public {
        _deposit(alice, 10 * USDC);
        _deposit(bob, 10 * USDC);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signWithdraw(alicePk, alice, 1 * USDC, deadline);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.requestWithdrawWithSig(alice, 2 * USDC, deadline, sig);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.requestWithdrawWithSig(bob, 1 * USDC, deadline, sig);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.requestWithdrawWithSig(alice, 1 * USDC, deadline + 1, sig);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.requestWithdrawWithSig(alice, 1 * USDC, deadline, hex"1234");
    }

    function test_requestWithdrawWithSig_revertsOnReplay() public {
        _deposit(alice, 10 * USDC);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signWithdraw(alicePk, alice, 1 * USDC, deadline);
        escrow.requestWithdrawWithSig(alice, 1 * USDC, deadline, sig);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.requestWithdrawWithSig(alice, 1 * USDC, deadline, sig);
        assertEq(escrow.accounts(alice).thawing, 1 * USDC);
    }

    function test_requestWithdrawWithSig_sharesNoncesWithAuthorizeGatewayWithSig() public {
        _deposit(alice, 10 * USDC);
        uint256 deadline = block.timestamp + 1 hours;
        // both signed at nonce 0: whichever lands first uses it, the other is void
        bytes memory auth = _signAuth(alicePk, alice, gateway, 5 * USDC, deadline);
        bytes memory withdrawal = _signWithdraw(alicePk, alice, 1 * USDC, deadline);
        escrow.requestWithdrawWithSig(alice, 1 * USDC, deadline, withdrawal);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(alice, gateway, 5 * USDC, deadline, auth);
        // and a withdrawal signature is not an authorization (different type), even at the right nonce
        bytes memory again = _signWithdraw(alicePk, alice, 1 * USDC, deadline);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(alice, gateway, 1 * USDC, deadline, again);
    }

    function test_requestWithdrawWithSig_revertsOnZeroAmount() public {
        _deposit(alice, 10 * USDC);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signWithdraw(alicePk, alice, 0, deadline);
        vm.expectRevert(ClusterEscrow.ZeroAmount.selector);
        escrow.requestWithdrawWithSig(alice, 0, deadline, sig);
    }

    function test_requestWithdrawWithSig_revertsAboveAvailable() public {
        _deposit(alice, 10 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(4 * USDC);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = _signWithdraw(alicePk, alice, 6 * USDC + 1, deadline);
        vm.expectRevert(
            abi.encodeWithSelector(ClusterEscrow.InsufficientBalance.selector, alice, 6 * USDC, 6 * USDC + 1)
        );
        escrow.requestWithdrawWithSig(alice, 6 * USDC + 1, deadline, sig);
        assertEq(escrow.nonces(alice), 0, "a reverted call leaves the nonce unused");
    }

    function test_requestWithdrawWithSig_revertsOnZeroPayer() public {
        uint256 deadline = block.timestamp + 1 hours;
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.requestWithdrawWithSig(address(0), 1, deadline, new bytes(65));
    }

    function test_requestWithdrawWithSig_acceptsErc1271Wallet() public {
        MockWallet wallet = new MockWallet(bob);
        _deposit(address(wallet), 10 * USDC);
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory wrong = _signWithdraw(alicePk, address(wallet), 3 * USDC, deadline);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.requestWithdrawWithSig(address(wallet), 3 * USDC, deadline, wrong);
        bytes memory sig = _signWithdraw(bobPk, address(wallet), 3 * USDC, deadline);
        escrow.requestWithdrawWithSig(address(wallet), 3 * USDC, deadline, sig);
        assertEq(escrow.accounts(address(wallet)).thawing, 3 * USDC);
    }

    // -------------------------------------------------------------------------------------- cancelWithdraw

    function test_cancelWithdraw_returnsThawingToAvailable() public {
        _deposit(alice, 10 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(4 * USDC);
        vm.expectEmit(address(escrow));
        emit WithdrawCancelled(alice, 4 * USDC);
        vm.prank(alice);
        escrow.cancelWithdraw();
        ClusterEscrow.Account memory a = escrow.accounts(alice);
        assertEq(a.available, 10 * USDC);
        assertEq(a.thawing, 0);
        assertEq(a.thawEndsAt, 0);
    }

    function test_cancelWithdraw_revertsWhenNothingThawing() public {
        vm.prank(alice);
        vm.expectRevert(ClusterEscrow.NothingThawing.selector);
        escrow.cancelWithdraw();
    }

    // -------------------------------------------------------------------------------------------- withdraw

    function test_withdraw_sendsAfterThaw() public {
        _deposit(alice, 10 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(4 * USDC);
        vm.warp(block.timestamp + THAW);
        vm.expectEmit(address(escrow));
        emit Withdrawn(alice, 4 * USDC);
        vm.prank(alice);
        assertEq(escrow.withdraw(), 4 * USDC);
        assertEq(usdc.balanceOf(alice), 4 * USDC);
        assertEq(escrow.balanceOf(alice), 6 * USDC);
        ClusterEscrow.Account memory a = escrow.accounts(alice);
        assertEq(a.thawing, 0);
        assertEq(a.thawEndsAt, 0);
    }

    function test_withdraw_sendsWhatIsLeftAfterSettlement() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 100 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(10 * USDC);
        _settle1(gateway, BATCH, alice, node1, 3 * USDC);
        vm.warp(block.timestamp + THAW);
        vm.prank(alice);
        assertEq(escrow.withdraw(), 7 * USDC);
        assertEq(usdc.balanceOf(alice), 7 * USDC);
        assertEq(escrow.balanceOf(alice), 0);
    }

    function test_withdraw_revertsBeforeThawEnds() public {
        _deposit(alice, 10 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(4 * USDC);
        uint256 endsAt = block.timestamp + THAW;
        vm.warp(endsAt - 1);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.ThawNotOver.selector, endsAt));
        escrow.withdraw();
    }

    function test_withdraw_revertsWhenNothingThawing() public {
        vm.prank(alice);
        vm.expectRevert(ClusterEscrow.NothingThawing.selector);
        escrow.withdraw();
    }

    function test_withdraw_revertsWhenThawWasSettledAway() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 100 * USDC);
        vm.prank(alice);
        escrow.requestWithdraw(10 * USDC);
        _settle1(gateway, BATCH, alice, node1, 10 * USDC);
        vm.warp(block.timestamp + THAW);
        vm.prank(alice);
        vm.expectRevert(ClusterEscrow.NothingThawing.selector);
        escrow.withdraw();
    }

    function test_withdraw_revertsAfterCancel() public {
        _deposit(alice, 10 * USDC);
        vm.startPrank(alice);
        escrow.requestWithdraw(10 * USDC);
        escrow.cancelWithdraw();
        vm.warp(block.timestamp + THAW);
        vm.expectRevert(ClusterEscrow.NothingThawing.selector);
        escrow.withdraw();
        vm.stopPrank();
    }

    function test_withdraw_zeroThawPeriodIsImmediate() public {
        ClusterEscrow instant = new ClusterEscrow(usdc, 0);
        usdc.mint(alice, 5);
        vm.startPrank(alice);
        usdc.approve(address(instant), 5);
        instant.deposit(5);
        instant.requestWithdraw(5);
        assertEq(instant.withdraw(), 5);
        vm.stopPrank();
    }

    // ----------------------------------------------------------------------------------------------- claim

    function test_claim_sendsEarnings() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        _settle1(gateway, BATCH, alice, node1, 4 * USDC);
        vm.expectEmit(address(escrow));
        emit EarningsClaimed(node1, node1, 4 * USDC);
        vm.prank(node1);
        assertEq(escrow.claim(), 4 * USDC);
        assertEq(usdc.balanceOf(node1), 4 * USDC);
        assertEq(escrow.earnings(node1), 0);
    }

    function test_claim_revertsWhenNothingToClaim() public {
        vm.prank(node1);
        vm.expectRevert(ClusterEscrow.NothingToClaim.selector);
        escrow.claim();
    }

    function test_claimTo_sendsEarningsElsewhere() public {
        _deposit(alice, 10 * USDC);
        _authorize(alice, gateway, 10 * USDC);
        _settle1(gateway, BATCH, alice, node1, 4 * USDC);
        vm.expectEmit(address(escrow));
        emit EarningsClaimed(node1, node2, 4 * USDC);
        vm.prank(node1);
        assertEq(escrow.claimTo(node2), 4 * USDC);
        assertEq(usdc.balanceOf(node2), 4 * USDC);
        assertEq(usdc.balanceOf(node1), 0);
        vm.prank(node1);
        vm.expectRevert(ClusterEscrow.NothingToClaim.selector);
        escrow.claimTo(node2);
    }

    function test_claimTo_revertsOnZeroRecipient() public {
        vm.prank(node1);
        vm.expectRevert(ClusterEscrow.ZeroAddress.selector);
        escrow.claimTo(address(0));
    }

    // ------------------------------------------------------------------------------------------------ fuzz

    function testFuzz_deposit(uint256 amount) public {
        amount = bound(amount, 1, type(uint128).max);
        _deposit(alice, amount);
        assertEq(escrow.balanceOf(alice), amount);
        assertEq(usdc.balanceOf(address(escrow)), amount);
    }

    /// Settling against a model: it succeeds iff amount <= min(balance, cap), and then takes available first.
    function testFuzz_settle(uint256 deposited, uint256 thaw, uint256 cap, uint256 amount, uint256 split) public {
        deposited = bound(deposited, 1, 1e15);
        thaw = bound(thaw, 0, deposited);
        cap = bound(cap, 0, 2e15);
        amount = bound(amount, 1, 2e15);
        _deposit(alice, deposited);
        _authorize(alice, gateway, cap);
        if (thaw > 0) {
            vm.prank(alice);
            escrow.requestWithdraw(thaw);
        }
        ClusterEscrow.Credit[] memory credits;
        uint256 first = bound(split, 0, amount);
        if (first == 0 || first == amount) {
            credits = _credits1(node1, amount);
        } else {
            credits = new ClusterEscrow.Credit[](2);
            credits[0] = ClusterEscrow.Credit(node1, first);
            credits[1] = ClusterEscrow.Credit(node2, amount - first);
        }

        vm.prank(gateway);
        if (amount > cap) {
            vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.CapExceeded.selector, alice, gateway, cap, amount));
        } else if (amount > deposited) {
            vm.expectRevert(
                abi.encodeWithSelector(ClusterEscrow.InsufficientBalance.selector, alice, deposited, amount)
            );
        }
        escrow.settle(BATCH, _debits1(alice, amount), credits);
        if (amount > cap || amount > deposited) {
            assertEq(escrow.balanceOf(alice), deposited);
            assertFalse(escrow.isBatchSettled(gateway, BATCH));
            return;
        }
        uint256 available = deposited - thaw;
        ClusterEscrow.Account memory a = escrow.accounts(alice);
        assertEq(a.available, amount <= available ? available - amount : 0);
        assertEq(a.thawing, amount <= available ? thaw : thaw - (amount - available));
        assertEq(escrow.balanceOf(alice), deposited - amount);
        assertEq(escrow.gatewayCap(alice, gateway), cap - amount);
        assertEq(escrow.earnings(node1) + escrow.earnings(node2), amount);
        assertEq(usdc.balanceOf(address(escrow)), deposited);
    }

    /// A lowered cap: the old one holds until the thaw ends, then min(what is left, the new one).
    function testFuzz_lowerCap(uint256 oldCap, uint256 newCap, uint256 settled, uint256 waited) public {
        oldCap = bound(oldCap, 1, 1e15);
        newCap = bound(newCap, 0, oldCap - 1);
        settled = bound(settled, 0, oldCap);
        waited = bound(waited, 0, 2 * THAW);
        _deposit(alice, oldCap);
        _authorize(alice, gateway, oldCap);
        _authorize(alice, gateway, newCap);
        vm.warp(block.timestamp + waited);
        uint256 expected = waited < THAW ? oldCap : newCap;
        assertEq(escrow.gatewayCap(alice, gateway), expected);
        if (settled > 0) {
            vm.prank(gateway);
            if (settled > expected) {
                vm.expectRevert(
                    abi.encodeWithSelector(ClusterEscrow.CapExceeded.selector, alice, gateway, expected, settled)
                );
            }
            escrow.settle(BATCH, _debits1(alice, settled), _credits1(node1, settled));
            if (settled <= expected) expected -= settled;
        }
        assertEq(escrow.gatewayCap(alice, gateway), expected);
        vm.warp(block.timestamp + THAW);
        assertEq(escrow.gatewayCap(alice, gateway), expected < newCap ? expected : newCap);
    }

    function testFuzz_withdraw(uint256 deposited, uint256 requested, uint256 settled, uint256 waited) public {
        deposited = bound(deposited, 1, 1e15);
        requested = bound(requested, 1, deposited);
        settled = bound(settled, 0, deposited);
        waited = bound(waited, 0, 2 * THAW);
        _deposit(alice, deposited);
        _authorize(alice, gateway, type(uint256).max);
        vm.prank(alice);
        escrow.requestWithdraw(requested);
        if (settled > 0) _settle1(gateway, BATCH, alice, node1, settled);
        uint256 available = deposited - requested;
        uint256 left = settled <= available ? requested : requested - (settled - available);
        vm.warp(block.timestamp + waited);

        vm.prank(alice);
        if (left == 0) {
            vm.expectRevert(ClusterEscrow.NothingThawing.selector);
            escrow.withdraw();
        } else if (waited < THAW) {
            vm.expectRevert(abi.encodeWithSelector(ClusterEscrow.ThawNotOver.selector, block.timestamp - waited + THAW));
            escrow.withdraw();
        } else {
            assertEq(escrow.withdraw(), left);
            assertEq(usdc.balanceOf(alice), left);
            assertEq(escrow.balanceOf(alice), deposited - settled - left);
        }
        assertEq(usdc.balanceOf(address(escrow)), escrow.balanceOf(alice) + escrow.earnings(node1));
    }

    function testFuzz_authorizeGatewayWithSig(uint256 pk, uint256 cap, uint256 deadline, uint256 wrongPk) public {
        pk = bound(pk, 1, SECP256K1_ORDER - 1);
        wrongPk = bound(wrongPk, 1, SECP256K1_ORDER - 1);
        deadline = bound(deadline, block.timestamp, type(uint64).max);
        address payer = vm.addr(pk);
        if (wrongPk != pk) {
            bytes memory bad = _signAuth(wrongPk, payer, gateway, cap, deadline);
            vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
            escrow.authorizeGatewayWithSig(payer, gateway, cap, deadline, bad);
        }
        bytes memory sig = _signAuth(pk, payer, gateway, cap, deadline);
        escrow.authorizeGatewayWithSig(payer, gateway, cap, deadline, sig);
        assertEq(escrow.gatewayCap(payer, gateway), cap >= type(uint192).max ? type(uint256).max : cap);
        assertEq(escrow.nonces(payer), 1);
        vm.expectRevert(ClusterEscrow.InvalidSignature.selector);
        escrow.authorizeGatewayWithSig(payer, gateway, cap, deadline, sig);
    }

    function testFuzz_depositWithAuthorization(uint256 pk, address beneficiary, uint256 amount, bytes32 salt) public {
        pk = bound(pk, 1, SECP256K1_ORDER - 1);
        amount = bound(amount, 1, type(uint128).max);
        vm.assume(beneficiary != address(0));
        address from = vm.addr(pk);
        usdc.mint(from, amount);
        uint256 validBefore = block.timestamp + 1;
        (uint8 v, bytes32 r, bytes32 s) = _signDeposit(pk, beneficiary, amount, 0, validBefore, salt);
        address other = beneficiary == relayer ? node1 : relayer;
        vm.expectRevert(TestUSDC.InvalidSignature.selector);
        escrow.depositWithAuthorization(from, other, amount, 0, validBefore, salt, v, r, s);
        vm.prank(relayer);
        escrow.depositWithAuthorization(from, beneficiary, amount, 0, validBefore, salt, v, r, s);
        assertEq(escrow.balanceOf(beneficiary), amount);
        assertEq(usdc.balanceOf(from), 0);
        assertEq(usdc.balanceOf(address(escrow)), amount);
    }
}
