// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {TestUSDC} from "../src/TestUSDC.sol";
import {BaseTest, MockWallet} from "./Base.t.sol";

contract TestUSDCTest is BaseTest {
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    bytes32 internal constant NONCE = keccak256("nonce-1");

    function _signTransfer(
        uint256 pk,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) internal view returns (uint8 v, bytes32 r, bytes32 s) {
        bytes32 digest = _eip3009Digest(
            usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), vm.addr(pk), to, value, validAfter, validBefore, nonce
        );
        return vm.sign(pk, digest);
    }

    function _signReceive(uint256 pk, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce)
        internal
        view
        returns (uint8 v, bytes32 r, bytes32 s)
    {
        bytes32 digest = _eip3009Digest(
            usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(), vm.addr(pk), to, value, validAfter, validBefore, nonce
        );
        return vm.sign(pk, digest);
    }

    function _signCancel(uint256 pk, bytes32 nonce) internal view returns (uint8 v, bytes32 r, bytes32 s) {
        bytes32 structHash = keccak256(abi.encode(usdc.CANCEL_AUTHORIZATION_TYPEHASH(), vm.addr(pk), nonce));
        return vm.sign(pk, keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash)));
    }

    function test_metadata_matchesUsdc() public view {
        assertEq(usdc.name(), "USD Coin");
        assertEq(usdc.symbol(), "USDC");
        assertEq(usdc.decimals(), 6);
        assertEq(usdc.version(), "2");
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("USD Coin"),
                keccak256("2"),
                block.chainid,
                address(usdc)
            )
        );
        assertEq(usdc.DOMAIN_SEPARATOR(), expected);
        assertEq(
            usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(),
            0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267
        );
        assertEq(
            usdc.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(),
            0xd099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8
        );
        assertEq(
            usdc.CANCEL_AUTHORIZATION_TYPEHASH(), 0x158b0a9edf7a828aad02f63cd515c68ef2f50ba807396f6d12842833a1597429
        );
    }

    function test_mint_isOpen() public {
        vm.prank(relayer);
        usdc.mint(alice, 5 * USDC);
        assertEq(usdc.balanceOf(alice), 5 * USDC);
        assertEq(usdc.totalSupply(), 5 * USDC);
    }

    function test_transferWithAuthorization_anyoneMaySubmit() public {
        usdc.mint(alice, 10 * USDC);
        (uint8 v, bytes32 r, bytes32 s) = _signTransfer(alicePk, bob, 4 * USDC, 0, block.timestamp + 60, NONCE);
        vm.expectEmit(address(usdc));
        emit AuthorizationUsed(alice, NONCE);
        vm.prank(relayer);
        usdc.transferWithAuthorization(alice, bob, 4 * USDC, 0, block.timestamp + 60, NONCE, v, r, s);
        assertEq(usdc.balanceOf(bob), 4 * USDC);
        assertEq(usdc.balanceOf(alice), 6 * USDC);
        assertTrue(usdc.authorizationState(alice, NONCE));
    }

    function test_transferWithAuthorization_bytesSignature() public {
        usdc.mint(alice, 10 * USDC);
        (uint8 v, bytes32 r, bytes32 s) = _signTransfer(alicePk, bob, 4 * USDC, 0, block.timestamp + 60, NONCE);
        usdc.transferWithAuthorization(alice, bob, 4 * USDC, 0, block.timestamp + 60, NONCE, abi.encodePacked(r, s, v));
        assertEq(usdc.balanceOf(bob), 4 * USDC);
    }

    function test_transferWithAuthorization_erc1271Wallet() public {
        MockWallet wallet = new MockWallet(bob);
        usdc.mint(address(wallet), 10 * USDC);
        bytes32 digest = _eip3009Digest(
            usdc.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), address(wallet), alice, 3, 0, block.timestamp + 60, NONCE
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(bobPk, digest);
        usdc.transferWithAuthorization(
            address(wallet), alice, 3, 0, block.timestamp + 60, NONCE, abi.encodePacked(r, s, v)
        );
        assertEq(usdc.balanceOf(alice), 3);
    }

    function test_transferWithAuthorization_revertsNotYetValid() public {
        usdc.mint(alice, 10);
        uint256 validAfter = block.timestamp;
        (uint8 v, bytes32 r, bytes32 s) = _signTransfer(alicePk, bob, 1, validAfter, validAfter + 60, NONCE);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.AuthorizationNotYetValid.selector, validAfter));
        usdc.transferWithAuthorization(alice, bob, 1, validAfter, validAfter + 60, NONCE, v, r, s);
    }

    function test_transferWithAuthorization_revertsExpired() public {
        usdc.mint(alice, 10);
        uint256 validBefore = block.timestamp;
        (uint8 v, bytes32 r, bytes32 s) = _signTransfer(alicePk, bob, 1, 0, validBefore, NONCE);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.AuthorizationExpired.selector, validBefore));
        usdc.transferWithAuthorization(alice, bob, 1, 0, validBefore, NONCE, v, r, s);
    }

    function test_transferWithAuthorization_revertsOnReplay() public {
        usdc.mint(alice, 10);
        (uint8 v, bytes32 r, bytes32 s) = _signTransfer(alicePk, bob, 1, 0, block.timestamp + 60, NONCE);
        usdc.transferWithAuthorization(alice, bob, 1, 0, block.timestamp + 60, NONCE, v, r, s);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.AuthorizationAlreadyUsed.selector, alice, NONCE));
        usdc.transferWithAuthorization(alice, bob, 1, 0, block.timestamp + 60, NONCE, v, r, s);
    }

    function test_transferWithAuthorization_revertsOnBadSignature() public {
        usdc.mint(alice, 10);
        (uint8 v, bytes32 r, bytes32 s) = _signTransfer(bobPk, bob, 1, 0, block.timestamp + 60, NONCE);
        vm.expectRevert(TestUSDC.InvalidSignature.selector);
        usdc.transferWithAuthorization(alice, bob, 1, 0, block.timestamp + 60, NONCE, v, r, s);
        vm.expectRevert(TestUSDC.InvalidSignature.selector);
        usdc.transferWithAuthorization(alice, bob, 1, 0, block.timestamp + 60, NONCE, hex"00");
    }

    function test_transferWithAuthorization_cannotBeUsedAsReceive() public {
        usdc.mint(alice, 10);
        (uint8 v, bytes32 r, bytes32 s) = _signTransfer(alicePk, bob, 1, 0, block.timestamp + 60, NONCE);
        vm.prank(bob);
        vm.expectRevert(TestUSDC.InvalidSignature.selector);
        usdc.receiveWithAuthorization(alice, bob, 1, 0, block.timestamp + 60, NONCE, v, r, s);
    }

    function test_receiveWithAuthorization_byPayee() public {
        usdc.mint(alice, 10);
        (uint8 v, bytes32 r, bytes32 s) = _signReceive(alicePk, bob, 7, 0, block.timestamp + 60, NONCE);
        vm.prank(bob);
        usdc.receiveWithAuthorization(alice, bob, 7, 0, block.timestamp + 60, NONCE, v, r, s);
        assertEq(usdc.balanceOf(bob), 7);
    }

    function test_receiveWithAuthorization_bytesSignature() public {
        usdc.mint(alice, 10);
        (uint8 v, bytes32 r, bytes32 s) = _signReceive(alicePk, bob, 7, 0, block.timestamp + 60, NONCE);
        vm.prank(bob);
        usdc.receiveWithAuthorization(alice, bob, 7, 0, block.timestamp + 60, NONCE, abi.encodePacked(r, s, v));
        assertEq(usdc.balanceOf(bob), 7);
    }

    function test_receiveWithAuthorization_revertsWhenCallerIsNotPayee() public {
        usdc.mint(alice, 10);
        (uint8 v, bytes32 r, bytes32 s) = _signReceive(alicePk, bob, 7, 0, block.timestamp + 60, NONCE);
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.CallerMustBePayee.selector, relayer, bob));
        usdc.receiveWithAuthorization(alice, bob, 7, 0, block.timestamp + 60, NONCE, v, r, s);
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.CallerMustBePayee.selector, relayer, bob));
        usdc.receiveWithAuthorization(alice, bob, 7, 0, block.timestamp + 60, NONCE, abi.encodePacked(r, s, v));
    }

    function test_cancelAuthorization_blocksLaterUse() public {
        usdc.mint(alice, 10);
        (uint8 v, bytes32 r, bytes32 s) = _signCancel(alicePk, NONCE);
        vm.expectEmit(address(usdc));
        emit AuthorizationCanceled(alice, NONCE);
        usdc.cancelAuthorization(alice, NONCE, v, r, s);
        assertTrue(usdc.authorizationState(alice, NONCE));
        (v, r, s) = _signTransfer(alicePk, bob, 1, 0, block.timestamp + 60, NONCE);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.AuthorizationAlreadyUsed.selector, alice, NONCE));
        usdc.transferWithAuthorization(alice, bob, 1, 0, block.timestamp + 60, NONCE, v, r, s);
    }

    function test_cancelAuthorization_bytesSignature() public {
        (uint8 v, bytes32 r, bytes32 s) = _signCancel(alicePk, NONCE);
        usdc.cancelAuthorization(alice, NONCE, abi.encodePacked(r, s, v));
        assertTrue(usdc.authorizationState(alice, NONCE));
    }

    function test_cancelAuthorization_revertsOnBadSignatureOrUsedNonce() public {
        (uint8 v, bytes32 r, bytes32 s) = _signCancel(bobPk, NONCE);
        vm.expectRevert(TestUSDC.InvalidSignature.selector);
        usdc.cancelAuthorization(alice, NONCE, v, r, s);
        (v, r, s) = _signCancel(alicePk, NONCE);
        usdc.cancelAuthorization(alice, NONCE, v, r, s);
        vm.expectRevert(abi.encodeWithSelector(TestUSDC.AuthorizationAlreadyUsed.selector, alice, NONCE));
        usdc.cancelAuthorization(alice, NONCE, v, r, s);
    }

    function testFuzz_transferWithAuthorization(uint256 pk, address to, uint256 value, bytes32 nonce) public {
        pk = bound(pk, 1, SECP256K1_ORDER - 1);
        vm.assume(to != address(0));
        value = bound(value, 0, type(uint128).max);
        address from = vm.addr(pk);
        vm.assume(to != from);
        usdc.mint(from, value);
        (uint8 v, bytes32 r, bytes32 s) = _signTransfer(pk, to, value, 0, block.timestamp + 1, nonce);
        usdc.transferWithAuthorization(from, to, value, 0, block.timestamp + 1, nonce, v, r, s);
        assertEq(usdc.balanceOf(to), value);
        assertEq(usdc.balanceOf(from), 0);
    }
}
