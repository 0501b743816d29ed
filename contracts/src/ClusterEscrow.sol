// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Nonces} from "@openzeppelin/contracts/utils/Nonces.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {IERC3009} from "./IERC3009.sol";

/// @title Cluster escrow: prepaid USDC balances that authorized gateways settle to node earnings
/// @notice Payers deposit the token (USDC) and authorize gateways, each up to a cap. A gateway settles a
///         batch of usage in one call: it debits payers (each within its balance and the cap that payer gave
///         this gateway) and credits the same total to payees (nodes' payout addresses), who claim it.
///         Whatever reduces what a gateway can settle takes `thawPeriod` to take effect: withdrawals thaw
///         (the thawing amount can still be settled) and lowering or revoking a cap applies at the end of the
///         same period, so a gateway always has that long to settle usage it has served. No owner, no fee,
///         no upgrade: funds move only by their owner's action or by a gateway the owner authorized, within
///         cap and balance.
/// @dev The token must be a plain ERC-20 without transfer fees or rebasing (USDC is); the gasless deposit
///      also needs EIP-3009 `receiveWithAuthorization`. Tokens sent to this contract by plain transfer are
///      not credited to anyone and stay here.
contract ClusterEscrow is EIP712, Nonces, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice A payer's funds. `available` can be settled or put to thaw; `thawing` is on its way out
    ///         (withdrawable from `thawEndsAt`) and can still be settled until it is withdrawn.
    struct Account {
        uint256 available;
        uint256 thawing;
        uint256 thawEndsAt;
    }

    /// @dev A gateway's authorization by a payer, in two slots: settling reads only the first. `cap` is what
    ///      is left to settle (type(uint192).max: unlimited); a lower cap requested by the payer waits in
    ///      `pendingCap` until `pendingAt` (0: none), then the cap becomes min(cap, pendingCap).
    struct Authorization {
        uint192 cap;
        uint64 pendingAt;
        uint192 pendingCap;
    }

    /// @notice One payer's share of a batch: the total it is charged.
    struct Debit {
        address payer;
        uint256 amount;
    }

    /// @notice One payee's share of a batch: the total it earns.
    struct Credit {
        address payee;
        uint256 amount;
    }

    /// @notice EIP-712 type a payer signs to authorize a gateway (see {authorizeGatewayWithSig}).
    bytes32 public constant AUTHORIZE_GATEWAY_TYPEHASH =
        keccak256("AuthorizeGateway(address payer,address gateway,uint256 cap,uint256 nonce,uint256 deadline)");

    /// @notice EIP-712 type a payer signs to start a withdrawal (see {requestWithdrawWithSig}).
    bytes32 public constant REQUEST_WITHDRAW_TYPEHASH =
        keccak256("RequestWithdraw(address payer,uint256 amount,uint256 nonce,uint256 deadline)");

    /// @notice A cap of this value (in fact any cap >= 2^192 - 1) is unlimited: settling does not consume it.
    uint256 public constant UNLIMITED_CAP = type(uint256).max;

    uint192 private constant _UNLIMITED = type(uint192).max;

    /// @notice Upper bound for the constructor's thaw period.
    uint256 public constant MAX_THAW_PERIOD = 365 days;

    /// @notice The escrowed token (USDC).
    IERC20 public immutable token;

    /// @notice Seconds between {requestWithdraw} and the earliest {withdraw}; also how long a lowered gateway
    ///         cap waits before it applies.
    uint256 public immutable thawPeriod;

    mapping(address payer => Account) private _accounts;

    mapping(address payer => mapping(address gateway => Authorization)) private _authorizations;

    /// @notice Settled earnings a payee has not claimed yet.
    mapping(address payee => uint256) public earnings;

    mapping(address gateway => mapping(bytes32 batchId => bool)) private _batchSettled;

    /// @notice `from` paid `amount` into `payer`'s balance.
    event Deposited(address indexed payer, address indexed from, uint256 amount);
    /// @notice `payer` set `gateway`'s cap to `cap` (0 revokes) from `effectiveAt` on: at once for a cap at
    ///         least the current one, after the thaw period for a lower one (then min(cap, what is left)).
    event GatewayAuthorized(address indexed payer, address indexed gateway, uint256 cap, uint256 effectiveAt);
    /// @notice In batch `batchId`, `gateway` charged `payer` `amount`.
    event Settled(bytes32 indexed batchId, address indexed gateway, address indexed payer, uint256 amount);
    /// @notice In batch `batchId`, `payee` earned `amount`.
    event EarningsCredited(bytes32 indexed batchId, address indexed gateway, address indexed payee, uint256 amount);
    /// @notice Batch `batchId` of `gateway` is settled: `total` moved from payers to payees.
    event BatchSettled(bytes32 indexed batchId, address indexed gateway, uint256 total);
    /// @notice `payer` put `amount` more to thaw; `thawing` is now thawing, withdrawable from `thawEndsAt`.
    event WithdrawRequested(address indexed payer, uint256 amount, uint256 thawing, uint256 thawEndsAt);
    /// @notice `payer` took `amount` back from thawing into its available balance.
    event WithdrawCancelled(address indexed payer, uint256 amount);
    /// @notice `payer` withdrew `amount` (what was left of its thawing amount).
    event Withdrawn(address indexed payer, uint256 amount);
    /// @notice `payee` claimed `amount` of earnings, sent to `to`.
    event EarningsClaimed(address indexed payee, address indexed to, uint256 amount);

    /// @notice An address that must not be zero was zero.
    error ZeroAddress();
    /// @notice An amount that must not be zero was zero.
    error ZeroAmount();
    /// @notice The constructor's thaw period is above MAX_THAW_PERIOD.
    error ThawPeriodTooLong(uint256 thawPeriod, uint256 max);
    /// @notice The signed authorization's deadline has passed.
    error SignatureExpired(uint256 deadline);
    /// @notice The signature is not the payer's over this authorization (or its nonce was used).
    error InvalidSignature();
    /// @notice `payer` has `balance` that can be used, less than `amount`.
    error InsufficientBalance(address payer, uint256 balance, uint256 amount);
    /// @notice `gateway` may settle only `cap` more from `payer`, less than `amount`.
    error CapExceeded(address payer, address gateway, uint256 cap, uint256 amount);
    /// @notice `gateway` already settled a batch with this id.
    error BatchAlreadySettled(address gateway, bytes32 batchId);
    /// @notice A batch needs at least one debit and one credit.
    error EmptyBatch();
    /// @notice The credits of a batch do not add up to its debits.
    error UnbalancedBatch(uint256 debited, uint256 credited);
    /// @notice There is no thawing amount.
    error NothingThawing();
    /// @notice The thaw ends at `thawEndsAt`; withdraw then.
    error ThawNotOver(uint256 thawEndsAt);
    /// @notice There are no earnings to claim.
    error NothingToClaim();

    /// @param token_ The escrowed token (USDC, or TestUSDC on a local chain).
    /// @param thawPeriod_ Seconds a withdrawal thaws and a lowered cap waits (at most MAX_THAW_PERIOD).
    constructor(IERC20 token_, uint256 thawPeriod_) EIP712("ClusterEscrow", "1") {
        if (address(token_) == address(0)) revert ZeroAddress();
        if (thawPeriod_ > MAX_THAW_PERIOD) revert ThawPeriodTooLong(thawPeriod_, MAX_THAW_PERIOD);
        token = token_;
        thawPeriod = thawPeriod_;
    }

    // ---------------------------------------------------------------------------------------------- deposits

    /// @notice Deposits `amount` of the caller's tokens into the caller's balance (approve the escrow first).
    function deposit(uint256 amount) external nonReentrant {
        _credit(msg.sender, msg.sender, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Deposits `amount` of the caller's tokens into `beneficiary`'s balance (approve first).
    function depositFor(address beneficiary, uint256 amount) external nonReentrant {
        _credit(beneficiary, msg.sender, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Gasless deposit that anyone may relay: pulls `amount` from `from` with `from`'s EIP-3009
    ///         ReceiveWithAuthorization signature (to = this escrow) and credits `beneficiary` (may be `from`).
    /// @dev The EIP-3009 nonce `from` signs must be `depositNonce(beneficiary, salt)`: that binds the
    ///      beneficiary to `from`'s signature, so a relayer (or a front-runner copying the call) cannot credit
    ///      anyone else. And as only the escrow may call `receiveWithAuthorization` with to = escrow, the
    ///      signature cannot be redirected to another recipient either.
    function depositWithAuthorization(
        address from,
        address beneficiary,
        uint256 amount,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 salt,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant {
        _credit(beneficiary, from, amount);
        IERC3009(address(token))
            .receiveWithAuthorization(
                from, address(this), amount, validAfter, validBefore, depositNonce(beneficiary, salt), v, r, s
            );
    }

    /// @notice The EIP-3009 nonce to sign for a {depositWithAuthorization} crediting `beneficiary`.
    function depositNonce(address beneficiary, bytes32 salt) public pure returns (bytes32) {
        return keccak256(abi.encode(beneficiary, salt));
    }

    function _credit(address payer, address from, uint256 amount) private {
        if (payer == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        _accounts[payer].available += amount;
        emit Deposited(payer, from, amount);
    }

    // -------------------------------------------------------------------------------------- authorizations

    /// @notice Lets `gateway` settle up to `cap` from the caller's balance, replacing the earlier cap; settling
    ///         consumes it (UNLIMITED_CAP is never consumed). A cap at least the current one applies at once;
    ///         a lower one (0 revokes) applies `thawPeriod` from now, when the cap becomes min(cap, what is
    ///         left of the current one): usage the gateway has already served can still be settled meanwhile.
    function authorizeGateway(address gateway, uint256 cap) external {
        _authorize(msg.sender, gateway, cap);
    }

    /// @notice {authorizeGateway} on the payer's EIP-712 signature of
    ///         AuthorizeGateway(payer, gateway, cap, nonce = nonces(payer), deadline); anyone may submit it
    ///         (normally the gateway). EOA and ERC-1271 (contract wallet) signatures are accepted.
    function authorizeGatewayWithSig(
        address payer,
        address gateway,
        uint256 cap,
        uint256 deadline,
        bytes calldata signature
    ) external {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        bytes32 digest = _hashTypedDataV4(
            keccak256(abi.encode(AUTHORIZE_GATEWAY_TYPEHASH, payer, gateway, cap, _useNonce(payer), deadline))
        );
        if (payer == address(0) || !SignatureChecker.isValidSignatureNowCalldata(payer, digest, signature)) {
            revert InvalidSignature();
        }
        _authorize(payer, gateway, cap);
    }

    function _authorize(address payer, address gateway, uint256 cap) private {
        if (gateway == address(0)) revert ZeroAddress();
        Authorization storage auth = _authorizations[payer][gateway];
        uint192 current = _currentCap(auth);
        // casting to 'uint192' is safe because cap < _UNLIMITED = type(uint192).max there
        // forge-lint: disable-next-line(unsafe-typecast)
        uint192 requested = cap >= _UNLIMITED ? _UNLIMITED : uint192(cap);
        if (requested >= current) {
            if (auth.pendingAt != 0) auth.pendingCap = 0;
            auth.cap = requested;
            auth.pendingAt = 0;
            emit GatewayAuthorized(payer, gateway, _external(requested), block.timestamp);
        } else {
            uint256 effectiveAt = block.timestamp + thawPeriod;
            auth.cap = current;
            // casting to 'uint64' is safe because effectiveAt <= now + MAX_THAW_PERIOD
            // forge-lint: disable-next-line(unsafe-typecast)
            auth.pendingAt = uint64(effectiveAt);
            auth.pendingCap = requested;
            emit GatewayAuthorized(payer, gateway, requested, effectiveAt);
        }
    }

    /// @dev The cap in force now: a lower cap whose time has come applies.
    function _currentCap(Authorization storage auth) private view returns (uint192 cap) {
        cap = auth.cap;
        uint256 pendingAt = auth.pendingAt;
        if (pendingAt != 0 && block.timestamp >= pendingAt) {
            uint192 pendingCap = auth.pendingCap;
            if (pendingCap < cap) cap = pendingCap;
        }
    }

    function _external(uint192 cap) private pure returns (uint256) {
        return cap == _UNLIMITED ? UNLIMITED_CAP : cap;
    }

    // ------------------------------------------------------------------------------------------ settlement

    /// @notice Settles one batch of usage for the calling gateway: each debit charges a payer (within its
    ///         balance, thawing part included, and within the cap it gave the caller, which is consumed);
    ///         the credits share out the same total to payees' claimable earnings. Each `batchId` settles
    ///         once per gateway.
    /// @dev For gas, aggregate off-chain: one debit per payer and one credit per payee (duplicates are
    ///      allowed and still checked). A debit takes the payer's available balance first, then its thawing
    ///      amount.
    function settle(bytes32 batchId, Debit[] calldata debits, Credit[] calldata credits) external {
        if (debits.length == 0 || credits.length == 0) revert EmptyBatch();
        mapping(bytes32 => bool) storage settled = _batchSettled[msg.sender];
        if (settled[batchId]) revert BatchAlreadySettled(msg.sender, batchId);
        settled[batchId] = true;

        uint256 total;
        for (uint256 i; i < debits.length; ++i) {
            address payer = debits[i].payer;
            uint256 amount = debits[i].amount;
            if (amount == 0) revert ZeroAmount();
            _consumeCap(payer, amount);
            _takeBalance(payer, amount);
            // Debits never exceed what payers hold in here, which is below the token's supply.
            unchecked {
                total += amount;
            }
            emit Settled(batchId, msg.sender, payer, amount);
        }

        uint256 remaining = total;
        for (uint256 i; i < credits.length; ++i) {
            address payee = credits[i].payee;
            uint256 amount = credits[i].amount;
            if (payee == address(0)) revert ZeroAddress();
            if (amount == 0) revert ZeroAmount();
            if (amount > remaining) {
                uint256 credited = total - remaining;
                revert UnbalancedBatch(
                    total, amount > type(uint256).max - credited ? type(uint256).max : credited + amount
                );
            }
            unchecked {
                remaining -= amount;
            }
            earnings[payee] += amount;
            emit EarningsCredited(batchId, msg.sender, payee, amount);
        }
        if (remaining != 0) revert UnbalancedBatch(total, total - remaining);

        emit BatchSettled(batchId, msg.sender, total);
    }

    /// @dev Takes `amount` off the cap `payer` gave the calling gateway (a lowered cap whose time has come
    ///      applies first).
    function _consumeCap(address payer, uint256 amount) private {
        Authorization storage auth = _authorizations[payer][msg.sender];
        uint192 cap = auth.cap;
        uint64 pendingAt = auth.pendingAt;
        if (pendingAt != 0 && block.timestamp >= pendingAt) {
            // below any unlimited cap, so the cap is written back below
            uint192 pendingCap = auth.pendingCap;
            if (pendingCap < cap) cap = pendingCap;
            auth.pendingAt = 0;
            auth.pendingCap = 0;
        }
        if (cap != _UNLIMITED) {
            if (amount > cap) revert CapExceeded(payer, msg.sender, cap, amount);
            unchecked {
                // casting to 'uint192' is safe because amount <= cap < 2^192
                // forge-lint: disable-next-line(unsafe-typecast)
                auth.cap = uint192(cap - amount);
            }
        }
    }

    /// @dev Takes `amount` from `payer`'s available balance, then from its thawing amount.
    function _takeBalance(address payer, uint256 amount) private {
        Account storage account = _accounts[payer];
        uint256 available = account.available;
        if (amount <= available) {
            unchecked {
                account.available = available - amount;
            }
            return;
        }
        uint256 thawing = account.thawing;
        unchecked {
            // available < amount here, so this cannot underflow
            uint256 fromThawing = amount - available;
            if (fromThawing > thawing) revert InsufficientBalance(payer, available + thawing, amount);
            if (available != 0) account.available = 0;
            account.thawing = thawing - fromThawing;
            if (thawing == fromThawing) account.thawEndsAt = 0;
        }
    }

    // ------------------------------------------------------------------------------------------ withdrawals

    /// @notice Starts thawing `amount` of the caller's available balance. If some is already thawing, the
    ///         amounts add up and the thaw restarts: all of it is withdrawable `thawPeriod` from now. The
    ///         thawing amount can still be settled by authorized gateways until it is withdrawn.
    function requestWithdraw(uint256 amount) external {
        _requestWithdraw(msg.sender, amount);
    }

    /// @notice {requestWithdraw} on the payer's EIP-712 signature of
    ///         RequestWithdraw(payer, amount, nonce = nonces(payer), deadline); anyone may submit it, so a payer
    ///         without ETH can start a withdrawal. Same nonces as {authorizeGatewayWithSig}; EOA and ERC-1271
    ///         (contract wallet) signatures are accepted.
    function requestWithdrawWithSig(address payer, uint256 amount, uint256 deadline, bytes calldata signature)
        external
    {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        bytes32 digest =
            _hashTypedDataV4(keccak256(abi.encode(REQUEST_WITHDRAW_TYPEHASH, payer, amount, _useNonce(payer), deadline)));
        if (payer == address(0) || !SignatureChecker.isValidSignatureNowCalldata(payer, digest, signature)) {
            revert InvalidSignature();
        }
        _requestWithdraw(payer, amount);
    }

    function _requestWithdraw(address payer, uint256 amount) private {
        if (amount == 0) revert ZeroAmount();
        Account storage account = _accounts[payer];
        uint256 available = account.available;
        if (amount > available) revert InsufficientBalance(payer, available, amount);
        uint256 thawing = account.thawing + amount;
        uint256 thawEndsAt = block.timestamp + thawPeriod;
        unchecked {
            account.available = available - amount;
        }
        account.thawing = thawing;
        account.thawEndsAt = thawEndsAt;
        emit WithdrawRequested(payer, amount, thawing, thawEndsAt);
    }

    /// @notice Returns the caller's thawing amount to its available balance.
    function cancelWithdraw() external {
        Account storage account = _accounts[msg.sender];
        uint256 thawing = account.thawing;
        if (thawing == 0) revert NothingThawing();
        account.available += thawing;
        account.thawing = 0;
        account.thawEndsAt = 0;
        emit WithdrawCancelled(msg.sender, thawing);
    }

    /// @notice Once the thaw is over, sends the caller what is left of its thawing amount.
    function withdraw() external nonReentrant returns (uint256 amount) {
        Account storage account = _accounts[msg.sender];
        amount = account.thawing;
        if (amount == 0) revert NothingThawing();
        uint256 thawEndsAt = account.thawEndsAt;
        if (block.timestamp < thawEndsAt) revert ThawNotOver(thawEndsAt);
        account.thawing = 0;
        account.thawEndsAt = 0;
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------------------------------------- earnings

    /// @notice Sends the caller all its earnings.
    function claim() external nonReentrant returns (uint256) {
        return _claim(msg.sender);
    }

    /// @notice Sends the caller's earnings to `to`.
    function claimTo(address to) external nonReentrant returns (uint256) {
        if (to == address(0)) revert ZeroAddress();
        return _claim(to);
    }

    function _claim(address to) private returns (uint256 amount) {
        amount = earnings[msg.sender];
        if (amount == 0) revert NothingToClaim();
        earnings[msg.sender] = 0;
        emit EarningsClaimed(msg.sender, to, amount);
        token.safeTransfer(to, amount);
    }

    // ---------------------------------------------------------------------------------------------- views

    /// @notice Everything `payer` has here that can be settled: available + thawing.
    function balanceOf(address payer) external view returns (uint256) {
        Account storage account = _accounts[payer];
        return account.available + account.thawing;
    }

    /// @notice `payer`'s available balance, thawing amount and the time its thaw ends (0: none).
    function accounts(address payer) external view returns (Account memory) {
        return _accounts[payer];
    }

    /// @notice How much `gateway` may settle from `payer` now (UNLIMITED_CAP: no limit), a lowered cap whose
    ///         time has come included.
    function gatewayCap(address payer, address gateway) external view returns (uint256) {
        return _external(_currentCap(_authorizations[payer][gateway]));
    }

    /// @notice `gateway`'s authorization by `payer` as stored: the cap left (UNLIMITED_CAP: no limit), and a
    ///         lower cap waiting to apply at `pendingAt` (0: none).
    function authorization(address payer, address gateway)
        external
        view
        returns (uint256 cap, uint256 pendingCap, uint256 pendingAt)
    {
        Authorization storage auth = _authorizations[payer][gateway];
        return (_external(auth.cap), auth.pendingCap, auth.pendingAt);
    }

    /// @notice Whether `gateway` has settled a batch with this id.
    function isBatchSettled(address gateway, bytes32 batchId) external view returns (bool) {
        return _batchSettled[gateway][batchId];
    }

    /// @notice The EIP-712 domain separator of this escrow (name "ClusterEscrow", version "1").
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }
}
