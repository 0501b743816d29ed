// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ClusterEscrow} from "../src/ClusterEscrow.sol";
import {TestUSDC} from "../src/TestUSDC.sol";

/// @dev A contract wallet (ERC-1271) that accepts whatever its owner key signed.
contract MockWallet is IERC1271 {
    address public immutable owner;

    constructor(address owner_) {
        owner = owner_;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) return 0xffffffff;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        return ecrecover(hash, v, r, s) == owner ? IERC1271.isValidSignature.selector : bytes4(0xffffffff);
    }
}

/// @dev Deployments, keys and signing helpers shared by the escrow and token tests.
abstract contract BaseTest is Test {
    uint256 internal constant THAW = 7 days;
    uint256 internal constant USDC = 1e6;

    TestUSDC internal usdc;
    ClusterEscrow internal escrow;

    uint256 internal alicePk = 0xA11CE;
    uint256 internal bobPk = 0xB0B;
    address internal alice;
    address internal bob;
    address internal gateway = makeAddr("gateway");
    address internal gateway2 = makeAddr("gateway2");
    address internal node1 = makeAddr("node1");
    address internal node2 = makeAddr("node2");
    address internal relayer = makeAddr("relayer");

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        alice = vm.addr(alicePk);
        bob = vm.addr(bobPk);
        usdc = new TestUSDC();
        escrow = new ClusterEscrow(usdc, THAW);
    }

    // ------------------------------------------------------------------------------------------- helpers

    function _fund(address who, uint256 amount) internal {
        usdc.mint(who, amount);
        vm.prank(who);
        usdc.approve(address(escrow), amount);
    }

    function _deposit(address who, uint256 amount) internal {
        _fund(who, amount);
        vm.prank(who);
        escrow.deposit(amount);
    }

    function _authorize(address payer, address gw, uint256 cap) internal {
        vm.prank(payer);
        escrow.authorizeGateway(gw, cap);
    }

    function _debits1(address payer, uint256 amount) internal pure returns (ClusterEscrow.Debit[] memory d) {
        d = new ClusterEscrow.Debit[](1);
        d[0] = ClusterEscrow.Debit(payer, amount);
    }

    function _credits1(address payee, uint256 amount) internal pure returns (ClusterEscrow.Credit[] memory c) {
        c = new ClusterEscrow.Credit[](1);
        c[0] = ClusterEscrow.Credit(payee, amount);
    }

    function _settle1(address gw, bytes32 batchId, address payer, address payee, uint256 amount) internal {
        vm.prank(gw);
        escrow.settle(batchId, _debits1(payer, amount), _credits1(payee, amount));
    }

    function _eip3009Digest(
        bytes32 typehash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) internal view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(typehash, from, to, value, validAfter, validBefore, nonce));
        return keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash));
    }

    /// @dev `from`'s ReceiveWithAuthorization signature for a deposit into the escrow crediting `beneficiary`.
    function _signDeposit(
        uint256 pk,
        address beneficiary,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 salt
    ) internal view returns (uint8 v, bytes32 r, bytes32 s) {
        bytes32 digest = _depositDigest(
            vm.addr(pk), value, validAfter, validBefore, escrow.depositNonce(beneficiary, salt)
        );
        return vm.sign(pk, digest);
    }

    function _depositDigest(address from, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce)
        internal
        view
        returns (bytes32)
    {
        bytes32 typehash = usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH();
        return _eip3009Digest(typehash, from, address(escrow), value, validAfter, validBefore, nonce);
    }

    function _authDigest(address payer, address gw, uint256 cap, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(escrow.AUTHORIZE_GATEWAY_TYPEHASH(), payer, gw, cap, nonce, deadline));
        return keccak256(abi.encodePacked("\x19\x01", escrow.DOMAIN_SEPARATOR(), structHash));
    }

    function _signAuth(uint256 pk, address payer, address gw, uint256 cap, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        bytes32 digest = _authDigest(payer, gw, cap, escrow.nonces(payer), deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v);
    }

    function _withdrawDigest(address payer, uint256 amount, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(escrow.REQUEST_WITHDRAW_TYPEHASH(), payer, amount, nonce, deadline));
        return keccak256(abi.encodePacked("\x19\x01", escrow.DOMAIN_SEPARATOR(), structHash));
    }

    /// @dev `pk`'s RequestWithdraw signature for `payer` at `payer`'s current nonce.
    function _signWithdraw(uint256 pk, address payer, uint256 amount, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        bytes32 digest = _withdrawDigest(payer, amount, escrow.nonces(payer), deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v);
    }
}
