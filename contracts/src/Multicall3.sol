// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title Multicall3: many calls in one, for local chains
/// @notice Our own implementation of the de facto standard Multicall3 interface (same function signatures,
///         same results, same revert messages), which viem's `multicall` and x402's diagnostics call at
///         0xcA11bde05977b3631167028862bE2a173976CA11. Public chains have the canonical deployment there; a
///         fresh local chain has nothing, so src/chain/devchain.ts places this contract's runtime code at that
///         address with `anvil_setCode`. It therefore has no constructor, no immutables and no storage.
/// @dev Calls are made with `call`, so `msg.sender` at the target is this contract. Value sent to the
///      non-value functions stays here, as with the canonical contract; do not send any.
contract Multicall3 {
    /// @notice A call that must succeed (aggregate, blockAndAggregate) or may fail (tryAggregate…).
    struct Call {
        address target;
        bytes callData;
    }

    /// @notice A call whose failure is tolerated when `allowFailure` is set.
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    /// @notice A Call3 that also sends `value` wei.
    struct Call3Value {
        address target;
        bool allowFailure;
        uint256 value;
        bytes callData;
    }

    /// @notice What one call returned (or its revert data when `success` is false).
    struct Result {
        bool success;
        bytes returnData;
    }

    /// @notice Makes every call; reverts with "Multicall3: call failed" if any fails.
    /// @return blockNumber The current block number.
    /// @return returnData What each call returned, in order.
    function aggregate(Call[] calldata calls)
        public
        payable
        returns (uint256 blockNumber, bytes[] memory returnData)
    {
        blockNumber = block.number;
        uint256 length = calls.length;
        returnData = new bytes[](length);
        for (uint256 i; i < length; ++i) {
            Call calldata c = calls[i];
            (bool success, bytes memory data) = c.target.call(c.callData);
            if (!success) revert("Multicall3: call failed");
            returnData[i] = data;
        }
    }

    /// @notice Makes every call; a failure reverts everything only if `requireSuccess` is set.
    function tryAggregate(bool requireSuccess, Call[] calldata calls)
        public
        payable
        returns (Result[] memory returnData)
    {
        uint256 length = calls.length;
        returnData = new Result[](length);
        for (uint256 i; i < length; ++i) {
            Call calldata c = calls[i];
            (bool success, bytes memory data) = c.target.call(c.callData);
            if (requireSuccess && !success) revert("Multicall3: call failed");
            returnData[i] = Result(success, data);
        }
    }

    /// @notice {tryAggregate}, with the current block's number and `blockhash(block.number)`, which the EVM
    ///         answers with zero for the current block: kept so, as the canonical contract returns it (use
    ///         {getLastBlockHash} for the previous block's hash).
    function tryBlockAndAggregate(bool requireSuccess, Call[] calldata calls)
        public
        payable
        returns (uint256 blockNumber, bytes32 blockHash, Result[] memory returnData)
    {
        blockNumber = block.number;
        blockHash = blockhash(block.number);
        returnData = tryAggregate(requireSuccess, calls);
    }

    /// @notice {tryBlockAndAggregate} with every call required to succeed.
    function blockAndAggregate(Call[] calldata calls)
        public
        payable
        returns (uint256 blockNumber, bytes32 blockHash, Result[] memory returnData)
    {
        (blockNumber, blockHash, returnData) = tryBlockAndAggregate(true, calls);
    }

    /// @notice Makes every call; one that fails without `allowFailure` reverts everything with
    ///         "Multicall3: call failed".
    function aggregate3(Call3[] calldata calls) public payable returns (Result[] memory returnData) {
        uint256 length = calls.length;
        returnData = new Result[](length);
        for (uint256 i; i < length; ++i) {
            Call3 calldata c = calls[i];
            (bool success, bytes memory data) = c.target.call(c.callData);
            if (!success && !c.allowFailure) revert("Multicall3: call failed");
            returnData[i] = Result(success, data);
        }
    }

    /// @notice {aggregate3} where each call sends its `value`; `msg.value` must equal their sum, else it
    ///         reverts with "Multicall3: value mismatch".
    function aggregate3Value(Call3Value[] calldata calls) public payable returns (Result[] memory returnData) {
        uint256 length = calls.length;
        returnData = new Result[](length);
        uint256 total;
        for (uint256 i; i < length; ++i) {
            Call3Value calldata c = calls[i];
            total += c.value;
            (bool success, bytes memory data) = c.target.call{value: c.value}(c.callData);
            if (!success && !c.allowFailure) revert("Multicall3: call failed");
            returnData[i] = Result(success, data);
        }
        if (msg.value != total) revert("Multicall3: value mismatch");
    }

    /// @notice The hash of block `blockNumber` (zero beyond the last 256 blocks, or for the current one).
    function getBlockHash(uint256 blockNumber) public view returns (bytes32 blockHash) {
        blockHash = blockhash(blockNumber);
    }

    function getBlockNumber() public view returns (uint256 blockNumber) {
        blockNumber = block.number;
    }

    function getCurrentBlockCoinbase() public view returns (address coinbase) {
        coinbase = block.coinbase;
    }

    /// @notice Since the merge: the previous block's RANDAO value (what DIFFICULTY now returns).
    function getCurrentBlockDifficulty() public view returns (uint256 difficulty) {
        difficulty = block.prevrandao;
    }

    function getCurrentBlockGasLimit() public view returns (uint256 gaslimit) {
        gaslimit = block.gaslimit;
    }

    function getCurrentBlockTimestamp() public view returns (uint256 timestamp) {
        timestamp = block.timestamp;
    }

    function getEthBalance(address addr) public view returns (uint256 balance) {
        balance = addr.balance;
    }

    /// @notice The hash of the previous block.
    function getLastBlockHash() public view returns (bytes32 blockHash) {
        unchecked {
            blockHash = blockhash(block.number - 1);
        }
    }

    function getBasefee() public view returns (uint256 basefee) {
        basefee = block.basefee;
    }

    function getChainId() public view returns (uint256 chainid) {
        chainid = block.chainid;
    }
}
