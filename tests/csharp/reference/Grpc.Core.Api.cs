// Reference declarations, for tests/test_unity_compile.py only (never shipped, never run): the part of
// Grpc.Core.Api's public API (grpc-dotnet 2.67) that GrpcDialogueTransport.cs calls, with the real namespaces,
// names and signatures. Bodies throw. This is not Grpc.Core.Api.
using System;
using System.Collections;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace Grpc.Core
{
    public enum StatusCode
    {
        OK = 0, Cancelled = 1, Unknown = 2, InvalidArgument = 3, DeadlineExceeded = 4, NotFound = 5, AlreadyExists = 6,
        PermissionDenied = 7, ResourceExhausted = 8, FailedPrecondition = 9, Aborted = 10, OutOfRange = 11,
        Unimplemented = 12, Internal = 13, Unavailable = 14, DataLoss = 15, Unauthenticated = 16,
    }

    public struct Status
    {
        public Status(StatusCode statusCode, string detail) { throw null; }
        public StatusCode StatusCode { get { throw null; } }
        public string Detail { get { throw null; } }
    }

    public class RpcException : Exception
    {
        public RpcException(Status status) { }
        public Status Status { get { throw null; } }
        public StatusCode StatusCode { get { throw null; } }
        public Metadata Trailers { get { throw null; } }
    }

    public sealed class Metadata : IList<Metadata.Entry>
    {
        public sealed class Entry
        {
            public Entry(string key, string value) { }
            public string Key { get { throw null; } }
            public string Value { get { throw null; } }
        }

        public Metadata() { }
        public void Add(string key, string value) { throw null; }
        public void Add(Entry item) { throw null; }
        public int IndexOf(Entry item) { throw null; }
        public void Insert(int index, Entry item) { throw null; }
        public void RemoveAt(int index) { throw null; }
        public Entry this[int index] { get { throw null; } set { throw null; } }
        public void Clear() { throw null; }
        public bool Contains(Entry item) { throw null; }
        public void CopyTo(Entry[] array, int arrayIndex) { throw null; }
        public int Count { get { throw null; } }
        public bool IsReadOnly { get { throw null; } }
        public bool Remove(Entry item) { throw null; }
        public IEnumerator<Entry> GetEnumerator() { throw null; }
        IEnumerator IEnumerable.GetEnumerator() { throw null; }
    }

    public sealed class WriteOptions { }
    public sealed class ContextPropagationToken { }
    public abstract class CallCredentials { }

    public struct CallOptions
    {
        public CallOptions(Metadata headers = null, DateTime? deadline = null,
                           CancellationToken cancellationToken = default(CancellationToken), WriteOptions writeOptions = null,
                           ContextPropagationToken propagationToken = null, CallCredentials credentials = null) { throw null; }
        public Metadata Headers { get { throw null; } }
        public CancellationToken CancellationToken { get { throw null; } }
    }

    public enum MethodType { Unary, ClientStreaming, ServerStreaming, DuplexStreaming }

    public class Marshaller<T>
    {
        public Marshaller(Func<T, byte[]> serializer, Func<byte[], T> deserializer) { }
    }

    public static class Marshallers
    {
        public static Marshaller<T> Create<T>(Func<T, byte[]> serializer, Func<byte[], T> deserializer) { throw null; }
    }

    public interface IMethod
    {
        MethodType Type { get; }
        string ServiceName { get; }
        string Name { get; }
        string FullName { get; }
    }

    public class Method<TRequest, TResponse> : IMethod
    {
        public Method(MethodType type, string serviceName, string name, Marshaller<TRequest> requestMarshaller,
                      Marshaller<TResponse> responseMarshaller) { }
        public MethodType Type { get { throw null; } }
        public string ServiceName { get { throw null; } }
        public string Name { get { throw null; } }
        public string FullName { get { throw null; } }
    }

    public interface IAsyncStreamReader<out T>
    {
        T Current { get; }
        Task<bool> MoveNext(CancellationToken cancellationToken);
    }

    public interface IAsyncStreamWriter<in T>
    {
        Task WriteAsync(T message);
        WriteOptions WriteOptions { get; set; }
    }

    public interface IClientStreamWriter<in T> : IAsyncStreamWriter<T>
    {
        Task CompleteAsync();
    }

    public sealed class AsyncUnaryCall<TResponse> : IDisposable
    {
        public Task<TResponse> ResponseAsync { get { throw null; } }
        public Task<Metadata> ResponseHeadersAsync { get { throw null; } }
        public void Dispose() { throw null; }
    }

    public sealed class AsyncServerStreamingCall<TResponse> : IDisposable
    {
        public IAsyncStreamReader<TResponse> ResponseStream { get { throw null; } }
        public void Dispose() { throw null; }
    }

    public sealed class AsyncDuplexStreamingCall<TRequest, TResponse> : IDisposable
    {
        public IAsyncStreamReader<TResponse> ResponseStream { get { throw null; } }
        public IClientStreamWriter<TRequest> RequestStream { get { throw null; } }
        public void Dispose() { throw null; }
    }

    public abstract class CallInvoker
    {
        public abstract TResponse BlockingUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string host,
            CallOptions options, TRequest request) where TRequest : class where TResponse : class;
        public abstract AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method,
            string host, CallOptions options, TRequest request) where TRequest : class where TResponse : class;
        public abstract AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options, TRequest request)
            where TRequest : class where TResponse : class;
        public abstract AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(
            Method<TRequest, TResponse> method, string host, CallOptions options) where TRequest : class where TResponse : class;
    }

    public abstract class ChannelBase
    {
        protected ChannelBase(string target) { }
        public string Target { get { throw null; } }
        public abstract CallInvoker CreateCallInvoker();
    }
}
