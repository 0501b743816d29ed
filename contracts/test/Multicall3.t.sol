// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Multicall3} from "../src/Multicall3.sol";

/// @dev What the multicalls call: a getter, a call that reverts with data, and one that takes value.
contract Target {
    error Nope(uint256 code);

    uint256 public received;
    address public lastSender;

    function echo(uint256 x) external pure returns (uint256) {
        return x * 2;
    }

    function fail() external pure {
        revert Nope(7);
    }

    function pay() external payable returns (uint256) {
        received += msg.value;
        lastSender = msg.sender;
        return msg.value;
    }
}

contract Multicall3Test is Test {
    /// The address viem and x402 look for; the devchain puts the runtime code there with anvil_setCode.
    address internal constant CANONICAL = 0xcA11bde05977b3631167028862bE2a173976CA11;

    Multicall3 internal mc;
    Target internal target;

    function setUp() public {
        // as on the devchain: runtime code only, no constructor ran at that address
        vm.etch(CANONICAL, address(new Multicall3()).code);
        mc = Multicall3(CANONICAL);
        target = new Target();
    }

    function _call3(bytes memory data, bool allowFailure) internal view returns (Multicall3.Call3 memory) {
        return Multicall3.Call3(address(target), allowFailure, data);
    }

    function _calls(bytes memory a, bytes memory b) internal view returns (Multicall3.Call[] memory calls) {
        calls = new Multicall3.Call[](2);
        calls[0] = Multicall3.Call(address(target), a);
        calls[1] = Multicall3.Call(address(target), b);
    }

    function test_aggregate3_returnsEachResultAndToleratesAllowedFailures() public {
        Multicall3.Call3[] memory calls = new Multicall3.Call3[](3);
        calls[0] = _call3(abi.encodeCall(Target.echo, (21)), false);
        calls[1] = _call3(abi.encodeCall(Target.fail, ()), true);
        calls[2] = Multicall3.Call3(CANONICAL, false, abi.encodeCall(Multicall3.getChainId, ()));
        Multicall3.Result[] memory results = mc.aggregate3(calls);
        assertEq(results.length, 3);
        assertTrue(results[0].success);
        assertEq(abi.decode(results[0].returnData, (uint256)), 42);
        assertFalse(results[1].success);
        assertEq(results[1].returnData, abi.encodeWithSelector(Target.Nope.selector, 7), "revert data kept");
        assertEq(abi.decode(results[2].returnData, (uint256)), block.chainid);
    }

    function test_aggregate3_revertsOnDisallowedFailure() public {
        Multicall3.Call3[] memory calls = new Multicall3.Call3[](2);
        calls[0] = _call3(abi.encodeCall(Target.echo, (1)), false);
        calls[1] = _call3(abi.encodeCall(Target.fail, ()), false);
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.aggregate3(calls);
    }

    function test_aggregate3_emptyIsEmpty() public {
        assertEq(mc.aggregate3(new Multicall3.Call3[](0)).length, 0);
    }

    function test_aggregate_returnsBlockNumberAndData() public {
        vm.roll(1234);
        (uint256 blockNumber, bytes[] memory data) =
            mc.aggregate(_calls(abi.encodeCall(Target.echo, (1)), abi.encodeCall(Target.echo, (5))));
        assertEq(blockNumber, 1234);
        assertEq(abi.decode(data[0], (uint256)), 2);
        assertEq(abi.decode(data[1], (uint256)), 10);

        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.aggregate(_calls(abi.encodeCall(Target.echo, (1)), abi.encodeCall(Target.fail, ())));
    }

    function test_tryAggregate_requireSuccessOrNot() public {
        Multicall3.Call[] memory calls = _calls(abi.encodeCall(Target.fail, ()), abi.encodeCall(Target.echo, (3)));
        Multicall3.Result[] memory results = mc.tryAggregate(false, calls);
        assertFalse(results[0].success);
        assertTrue(results[1].success);
        assertEq(abi.decode(results[1].returnData, (uint256)), 6);
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.tryAggregate(true, calls);
    }

    function test_blockAndAggregate_andTry() public {
        vm.roll(77);
        (uint256 blockNumber, bytes32 blockHash, Multicall3.Result[] memory results) =
            mc.tryBlockAndAggregate(false, _calls(abi.encodeCall(Target.fail, ()), abi.encodeCall(Target.echo, (4))));
        assertEq(blockNumber, 77);
        assertEq(blockHash, blockhash(77), "the canonical contract's blockhash(block.number)");
        assertFalse(results[0].success);
        assertEq(abi.decode(results[1].returnData, (uint256)), 8);

        (blockNumber,, results) =
            mc.blockAndAggregate(_calls(abi.encodeCall(Target.echo, (1)), abi.encodeCall(Target.echo, (2))));
        assertEq(blockNumber, 77);
        assertTrue(results[0].success && results[1].success);
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.blockAndAggregate(_calls(abi.encodeCall(Target.echo, (1)), abi.encodeCall(Target.fail, ())));
    }

    function test_aggregate3Value_sendsEachValue() public {
        Multicall3.Call3Value[] memory calls = new Multicall3.Call3Value[](3);
        calls[0] = Multicall3.Call3Value(address(target), false, 1 ether, abi.encodeCall(Target.pay, ()));
        calls[1] = Multicall3.Call3Value(address(target), false, 2 ether, abi.encodeCall(Target.pay, ()));
        // a tolerated failure among them
        calls[2] = Multicall3.Call3Value(address(target), true, 0, abi.encodeCall(Target.fail, ()));
        vm.deal(address(this), 10 ether);
        Multicall3.Result[] memory results = mc.aggregate3Value{value: 3 ether}(calls);
        assertEq(abi.decode(results[1].returnData, (uint256)), 2 ether);
        assertFalse(results[2].success);
        assertEq(target.received(), 3 ether);
        assertEq(target.lastSender(), CANONICAL);
        assertEq(CANONICAL.balance, 0);
    }

    function test_aggregate3Value_revertsOnValueMismatchOrFailure() public {
        Multicall3.Call3Value[] memory calls = new Multicall3.Call3Value[](1);
        calls[0] = Multicall3.Call3Value(address(target), false, 1 ether, abi.encodeCall(Target.pay, ()));
        vm.deal(address(this), 10 ether);
        vm.expectRevert(bytes("Multicall3: value mismatch"));
        mc.aggregate3Value{value: 2 ether}(calls);
        vm.expectRevert(bytes("Multicall3: call failed")); // no value to pass on: the call itself fails
        mc.aggregate3Value{value: 0}(calls);
        calls[0] = Multicall3.Call3Value(address(target), false, 0, abi.encodeCall(Target.fail, ()));
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.aggregate3Value(calls);
    }

    function test_blockGetters() public {
        vm.roll(500);
        vm.warp(1_800_000_000);
        vm.fee(7 gwei);
        vm.coinbase(address(0xC0FFEE));
        vm.setBlockhash(499, keccak256("block 499"));
        vm.setBlockhash(300, keccak256("block 300"));
        vm.deal(address(0xBEEF), 5 ether);
        assertEq(mc.getBlockNumber(), 500);
        assertEq(mc.getCurrentBlockTimestamp(), 1_800_000_000);
        assertEq(mc.getBasefee(), 7 gwei);
        assertEq(mc.getCurrentBlockCoinbase(), address(0xC0FFEE));
        assertEq(mc.getCurrentBlockGasLimit(), block.gaslimit);
        assertEq(mc.getCurrentBlockDifficulty(), block.prevrandao);
        assertEq(mc.getChainId(), block.chainid);
        assertEq(mc.getEthBalance(address(0xBEEF)), 5 ether);
        assertEq(mc.getLastBlockHash(), keccak256("block 499"));
        assertEq(mc.getBlockHash(300), keccak256("block 300"));
    }
}
